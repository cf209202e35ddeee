"""Proto <-> domain translation shared by the servicer and the executor client: calls,
WASI views, offloads, exports, function configurations and invocation errors."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.common.v1.values_json import TYPE_NAMES
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.call_args import check_call
from tensorwasm_common.errors import ServiceError

from tensorwasm_gateway.calls import (
    Call,
    ExportRecord,
    FunctionConfig,
    OffloadDeclaration,
    WasiConfig,
)
from tensorwasm_gateway.limits import limits_from_wire, limits_to_wire

WIRE_TYPES = {name: wire for wire, name in TYPE_NAMES.items()}
_CONFIG_CACHE_ENTRIES = 4096


def call_from_wire(request: pb.InvokeRequest) -> Call:
    """The call a gateway InvokeRequest asks for (its name is the servicer's to read).

    Raises:
        FieldTooLargeError: too many or too large arguments, or too long an export name
            (checked before anything is converted).
    """
    check_call(request.export_name, request.args)
    return Call(
        export_name=request.export_name,
        args=request.args,
        stdin=request.stdin,
        limits=limits_from_wire(request.limits),
        input=request.input,
    )


def wasi_from_wire(config: invocation_pb2.WasiConfig) -> WasiConfig:
    """The WASI view a message describes."""
    return WasiConfig(
        argv=tuple(config.argv),
        env=dict(config.env),
        read_only_dir=config.read_only_dir,
        guest_dir=config.guest_dir,
    )


def wasi_to_wire(config: WasiConfig) -> invocation_pb2.WasiConfig:
    """The WASI view as a message."""
    return invocation_pb2.WasiConfig(
        argv=config.argv,
        env=config.env,
        read_only_dir=config.read_only_dir,
        guest_dir=config.guest_dir,
    )


def offloads_to_wire(
    offloads: Iterable[OffloadDeclaration],
) -> list[invocation_pb2.OffloadedExport]:
    """The offload declarations as messages."""
    return [
        invocation_pb2.OffloadedExport(export_name=o.export_name, op=o.op, args=o.args)
        for o in offloads
    ]


def exports_from_wire(exports: Iterable[values_pb2.ExportedFunction]) -> tuple[ExportRecord, ...]:
    """A module's exports with value-type names (`unknown` for a type without one)."""
    return tuple(
        ExportRecord(
            e.name,
            tuple(TYPE_NAMES.get(t, "unknown") for t in e.signature.params),
            tuple(TYPE_NAMES.get(t, "unknown") for t in e.signature.results),
        )
        for e in exports
    )


def exports_to_wire(exports: Sequence[ExportRecord]) -> list[values_pb2.ExportedFunction]:
    """The exports as messages (a name without a value type: VALUE_TYPE_UNSPECIFIED)."""
    return [
        values_pb2.ExportedFunction(
            name=e.name,
            signature=values_pb2.FunctionSignature(
                params=[WIRE_TYPES.get(t, values_pb2.VALUE_TYPE_UNSPECIFIED) for t in e.params],
                results=[WIRE_TYPES.get(t, values_pb2.VALUE_TYPE_UNSPECIFIED) for t in e.results],
            ),
        )
        for e in exports
    ]


def function_config_from_wire(config: pb.FunctionConfig) -> FunctionConfig:
    """The configuration a message describes."""
    return FunctionConfig(
        wasi=wasi_from_wire(config.wasi),
        default_limits=limits_from_wire(config.default_limits),
        init_export=config.init_export,
        no_init=config.no_init,
        auto_offload=config.auto_offload,
        offloads=tuple(
            OffloadDeclaration(o.export_name, o.op, tuple(o.args)) for o in config.offloads
        ),
        display_name=config.display_name,
        checkpoint_seconds=config.checkpoint_seconds,
    )


def function_config_to_wire(config: FunctionConfig) -> pb.FunctionConfig:
    """The configuration as a message."""
    return pb.FunctionConfig(
        wasi=wasi_to_wire(config.wasi),
        default_limits=limits_to_wire(config.default_limits),
        init_export=config.init_export,
        no_init=config.no_init,
        auto_offload=config.auto_offload,
        offloads=offloads_to_wire(config.offloads),
        display_name=config.display_name,
        checkpoint_seconds=config.checkpoint_seconds,
    )


@functools.lru_cache(maxsize=_CONFIG_CACHE_ENTRIES)
def _decode_config(stored: bytes) -> FunctionConfig:
    # Every call of a function decodes its row's configuration: the few distinct ones
    # are decoded once (the result is frozen, so sharing it is safe).
    return function_config_from_wire(pb.FunctionConfig.FromString(stored))


class FunctionConfigWire:
    """Keeps a function's configuration in its registry row as the wire's
    `FunctionConfig` (the row format of every release)."""

    def encode(self, config: FunctionConfig) -> bytes:
        """The row's bytes for `config`."""
        return function_config_to_wire(config).SerializeToString()

    def decode(self, stored: bytes) -> FunctionConfig:
        """The configuration a row holds."""
        return _decode_config(stored)


FUNCTION_CONFIGS = FunctionConfigWire()


def invocation_error_to_wire(error: ServiceError) -> pb.InvocationError:
    """The status a synchronous Invoke would have returned, as an invocation keeps it."""
    return pb.InvocationError(
        code=int(error.code), message=error.message, reason=error.reason, metadata=error.metadata
    )


def encode_invocation_error(error: ServiceError) -> bytes:
    """An invocation's error as its row keeps it (the wire's `InvocationError`)."""
    return invocation_error_to_wire(error).SerializeToString()
