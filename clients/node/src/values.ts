/**
 * WebAssembly values, typed: i32 as a number (integral, in range, or refused), i64 as a
 * bigint, f32/f64 as their IEEE-754 bits (so NaN payloads and -0 round-trip exactly),
 * v128 as 16 bytes.
 */
import { create } from "@bufbuild/protobuf";
import { type Value, ValueSchema } from "./gen/tensorwasm/common/v1/values_pb.js";

const I32_MIN = -(2 ** 31);
const I32_MAX = 2 ** 31 - 1;
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

/** A wasm i32. Throws a TypeError for a non-integral number, a RangeError outside i32. */
export function i32(value: number): Value {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new TypeError(`i32 takes an integral number, got ${String(value)}`);
  }
  if (value < I32_MIN || value > I32_MAX) {
    throw new RangeError(`${value} is outside i32 [${I32_MIN}, ${I32_MAX}]`);
  }
  return create(ValueSchema, { kind: { case: "i32", value } });
}

/** A wasm i64, from a bigint (or a safe integer). Throws outside the signed 64-bit range. */
export function i64(value: bigint | number): Value {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new TypeError(`i64 takes a bigint or a safe integer, got ${String(value)}`);
  }
  const big = BigInt(value);
  if (big < I64_MIN || big > I64_MAX) {
    throw new RangeError(`${big} is outside i64`);
  }
  return create(ValueSchema, { kind: { case: "i64", value: big } });
}

/** A wasm f32 from a number (rounded to binary32). For exact NaN payloads use `f32Bits`. */
export function f32(value: number): Value {
  return f32Bits(f32ToBits(value));
}

/** A wasm f32 from its 32 IEEE-754 bits, kept as they are (NaN payloads included). */
export function f32Bits(bits: number): Value {
  if (!Number.isInteger(bits) || bits < 0 || bits > 0xffffffff) {
    throw new RangeError(`f32 bits must be an unsigned 32-bit integer, got ${bits}`);
  }
  return create(ValueSchema, { kind: { case: "f32Bits", value: bits } });
}

/** A wasm f64 from a number. For exact NaN payloads use `f64Bits`. */
export function f64(value: number): Value {
  return f64Bits(f64ToBits(value));
}

/** A wasm f64 from its 64 IEEE-754 bits, kept as they are (NaN payloads included). */
export function f64Bits(bits: bigint): Value {
  if (bits < 0n || bits > 0xffffffffffffffffn) {
    throw new RangeError(`f64 bits must be an unsigned 64-bit integer, got ${bits}`);
  }
  return create(ValueSchema, { kind: { case: "f64Bits", value: bits } });
}

/** A wasm v128 from its 16 little-endian bytes. */
export function v128(bytes: Uint8Array): Value {
  if (!(bytes instanceof Uint8Array) || bytes.length !== 16) {
    throw new RangeError("v128 takes exactly 16 bytes");
  }
  return create(ValueSchema, { kind: { case: "v128", value: Uint8Array.from(bytes) } });
}

/** The binary32 bits of a number (rounded to f32 first). */
export function f32ToBits(value: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value, true);
  return view.getUint32(0, true);
}

/** The number that f32 bits denote (a NaN's payload is not kept by a JS number). */
export function f32FromBits(bits: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint32(0, bits, true);
  return view.getFloat32(0, true);
}

/** The binary64 bits of a number. */
export function f64ToBits(value: number): bigint {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, value, true);
  return view.getBigUint64(0, true);
}

/** The number that f64 bits denote. */
export function f64FromBits(bits: bigint): number {
  const view = new DataView(new ArrayBuffer(8));
  view.setBigUint64(0, bits, true);
  return view.getFloat64(0, true);
}

/** A wire value, decoded: floats carry both their bits (exact) and their number. */
export type WasmValue =
  | { type: "i32"; value: number }
  | { type: "i64"; value: bigint }
  | { type: "f32"; value: number; bits: number }
  | { type: "f64"; value: number; bits: bigint }
  | { type: "v128"; value: Uint8Array };

/** Decodes a wire value (a result of Invoke). Throws for an empty value. */
export function fromValue(value: Value): WasmValue {
  const kind = value.kind;
  switch (kind.case) {
    case "i32":
      return { type: "i32", value: kind.value };
    case "i64":
      return { type: "i64", value: kind.value };
    case "f32Bits":
      return { type: "f32", value: f32FromBits(kind.value), bits: kind.value };
    case "f64Bits":
      return { type: "f64", value: f64FromBits(kind.value), bits: kind.value };
    case "v128":
      return { type: "v128", value: kind.value };
    default:
      throw new TypeError("the value has no kind");
  }
}
