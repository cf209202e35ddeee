"""Translation between the wire types (tensorwasm.common.v1) and the sandbox's values."""

from __future__ import annotations

from google.protobuf import duration_pb2
from tensorwasm.common.v1 import invocation_pb2, values_pb2

from tensorwasm_executor.errors import ArgumentMismatchError
from tensorwasm_executor.wasm.sandbox import ExportInfo, Outcome
from tensorwasm_executor.wasm.values import ValueType, WasmValue

_TO_WIRE_TYPE = {
    ValueType.I32: values_pb2.VALUE_TYPE_I32,
    ValueType.I64: values_pb2.VALUE_TYPE_I64,
    ValueType.F32: values_pb2.VALUE_TYPE_F32,
    ValueType.F64: values_pb2.VALUE_TYPE_F64,
    ValueType.V128: values_pb2.VALUE_TYPE_V128,
    ValueType.FUNCREF: values_pb2.VALUE_TYPE_FUNCREF,
    ValueType.EXTERNREF: values_pb2.VALUE_TYPE_EXTERNREF,
}
_FROM_WIRE_FIELD = {
    "i32": ValueType.I32,
    "i64": ValueType.I64,
    "f32_bits": ValueType.F32,
    "f64_bits": ValueType.F64,
    "v128": ValueType.V128,
}
_TO_WIRE_FIELD = {value_type: name for name, value_type in _FROM_WIRE_FIELD.items()}


def value_from_wire(value: values_pb2.Value, position: int) -> WasmValue:
    """A sandbox value from a wire value (raw bits for floats)."""
    field = value.WhichOneof("kind")
    if field is None:
        raise ArgumentMismatchError(
            f"argument {position} has no value", metadata={"position": str(position)}
        )
    return WasmValue(_FROM_WIRE_FIELD[field], getattr(value, field))


def value_to_wire(value: WasmValue) -> values_pb2.Value:
    """A wire value from a sandbox value."""
    wire = values_pb2.Value()
    setattr(wire, _TO_WIRE_FIELD[value.type], value.payload)
    return wire


def export_to_wire(export: ExportInfo) -> values_pb2.ExportedFunction:
    """An export and its signature on the wire."""
    return values_pb2.ExportedFunction(
        name=export.name,
        signature=values_pb2.FunctionSignature(
            params=[_TO_WIRE_TYPE[t] for t in export.params],
            results=[_TO_WIRE_TYPE[t] for t in export.results],
        ),
    )


def outcome_to_wire(outcome: Outcome) -> invocation_pb2.InvocationOutcome:
    """The invocation outcome on the wire: results or the failure, with captured output."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(outcome.guest_seconds * 1e9))
    wire = invocation_pb2.InvocationOutcome(
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        guest_duration=duration,
        memory_cap_hit=outcome.memory_cap_hit,
        table_cap_hit=outcome.table_cap_hit,
        chunks=outcome.chunks,
    )
    if outcome.failure is not None:
        failure = outcome.failure
        wire.failure.CopyFrom(
            invocation_pb2.InvocationFailure(
                trap_code=invocation_pb2.TrapCode.Value(f"TRAP_CODE_{failure.trap_code}")
                if failure.trap_code
                else invocation_pb2.TRAP_CODE_UNSPECIFIED,
                reason=failure.reason,
                message=failure.message,
                exit_code=failure.exit_code or 0,
            )
        )
    else:
        wire.success.results.extend(value_to_wire(v) for v in outcome.results or ())
    return wire
