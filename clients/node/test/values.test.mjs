import assert from "node:assert/strict";
import { test } from "node:test";
import { f32, f32Bits, f32FromBits, f64Bits, f64ToBits, fromValue, i32, i64, v128 } from "../dist/index.js";

test("i32 refuses a non-integral or out-of-range number instead of truncating it", () => {
  assert.throws(() => i32(3.7), TypeError);
  assert.throws(() => i32(Number.NaN), TypeError);
  assert.throws(() => i32(2 ** 31), RangeError);
  assert.deepEqual(fromValue(i32(-(2 ** 31))), { type: "i32", value: -(2 ** 31) });
});

test("i64 is a bigint end to end; unsafe numbers are refused", () => {
  assert.equal(fromValue(i64(2n ** 63n - 1n)).value, 2n ** 63n - 1n);
  assert.throws(() => i64(2 ** 60), TypeError);
  assert.throws(() => i64(2n ** 63n), RangeError);
});

test("float bits are kept as given: NaN payloads and -0", () => {
  const quiet = fromValue(f32Bits(0x7fa00001));
  assert.equal(quiet.bits, 0x7fa00001);
  assert.ok(Number.isNaN(quiet.value));
  assert.equal(fromValue(f64Bits(0x7ff4000000000001n)).bits, 0x7ff4000000000001n);
  assert.equal(f64ToBits(-0), 0x8000000000000000n);
  assert.equal(f32FromBits(fromValue(f32(1.5)).bits), 1.5);
});

test("v128 takes exactly 16 bytes", () => {
  assert.throws(() => v128(new Uint8Array(15)), RangeError);
  assert.deepEqual(fromValue(v128(new Uint8Array(16).fill(7))).value, new Uint8Array(16).fill(7));
});
