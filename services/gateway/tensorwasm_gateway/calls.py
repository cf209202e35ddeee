"""The typed objects of a guest call and of a function's configuration, shared by the
gateway's domain, its servicer and its executor client.

The domain never reads a call's argument values or its outcome: it relays them. They
stay the wire's messages (`WireMessage`: the domain can only serialize one, to keep
it), so a call costs no conversion; the servicer and the executor client (the edge)
are the only code that looks inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tensorwasm_common.call_limits import UNSET, CallLimits


class WireMessage(Protocol):
    """A wire message the domain relays unread."""

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf method's name
        """The message's bytes (to store it)."""
        ...


@dataclass(frozen=True)
class ExportRecord:
    """An export's name and its signature as value-type names (`i32`, `f64`, ...)."""

    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class WasiConfig:
    """The guest's argv, environment and read-only directory (see `WasiConfig` in
    invocation.proto); empty fields: none."""

    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    read_only_dir: str = ""
    guest_dir: str = ""


@dataclass(frozen=True)
class OffloadDeclaration:
    """An export the executor runs as a GPU tensor op (from the module's offload section)."""

    export_name: str
    op: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class FunctionConfig:
    """What a deploy asks for, and (once deployed) what the function runs with."""

    wasi: WasiConfig = WasiConfig()
    default_limits: CallLimits = UNSET  # used where a call leaves a field unset
    init_export: str = ""  # deployed: the init export in use ("" for none)
    no_init: bool = False
    auto_offload: bool = False
    offloads: tuple[OffloadDeclaration, ...] = ()  # deployed: the checked declarations
    display_name: str = ""  # free-form, not unique (the HTTP face's `name`)
    checkpoint_seconds: int = 0  # > 0: live instances are checkpointed this often


DEFAULT_CONFIG = FunctionConfig()


class FunctionConfigCodec(Protocol):
    """How a function's configuration is kept in its registry row (bytes the edge
    chooses: the wire's `FunctionConfig`, so rows of every release read alike)."""

    def encode(self, config: FunctionConfig) -> bytes:
        """The row's bytes for `config`."""
        ...

    def decode(self, stored: bytes) -> FunctionConfig:
        """The configuration a row holds (b"": the default one)."""
        ...


@dataclass(frozen=True)
class Call:
    """A call of a function as its caller asks for it."""

    export_name: str = ""  # "" lets the gateway choose (see `choose_export`)
    args: Sequence[WireMessage] = ()  # the wire's `Value`s, relayed to the executor
    stdin: bytes = b""
    limits: CallLimits = UNSET  # as requested; resolved when the call is addressed
    input: bytes = b""  # staged for the guest's wasi:tensor input channel


@dataclass(frozen=True)
class Target:
    """Where a call runs: the module, for which tenant, with which WASI view, image and
    offloads (what the function's record says)."""

    tenant: str
    module_digest: str
    wasi: WasiConfig = WasiConfig()
    init_export: str = ""
    offloads: tuple[OffloadDeclaration, ...] = ()


@dataclass(frozen=True)
class AddressedCall:
    """A call ready for an executor: its target, the export chosen and its effective limits."""

    target: Target
    export_name: str
    args: Sequence[WireMessage] = ()
    stdin: bytes = b""
    limits: CallLimits = UNSET
    input: bytes = b""


@dataclass(frozen=True)
class CallResult:
    """What an executor answered: the wire's `InvocationOutcome`, relayed unread, and
    whether the guest returned (a trap or another guest failure is an outcome too)."""

    outcome: WireMessage
    succeeded: bool


@dataclass(frozen=True)
class InstanceLaunch:
    """An instance to start: its target, the start function's stdin and limits, and how
    long it may stay idle (None: the executor's default)."""

    target: Target
    stdin: bytes = b""
    limits: CallLimits = UNSET
    idle_ttl_ns: int | None = None
    input: bytes = b""  # the instance's wasi:tensor input
    function_id: str = ""  # named in the instance's snapshots
    checkpoint_seconds: int = 0


@dataclass(frozen=True)
class InstanceRestore:
    """Where a restored instance's state comes from (a record, or "" for the checkpoint of
    `instance_id`), the id it takes ("" for a new one) and the guards on the record."""

    snapshot_id: str = ""
    instance_id: str = ""
    max_restore_bytes: int = 0
    require_signature: bool = False


@dataclass(frozen=True)
class LaunchedInstance:
    """An executor's answer to an instance start: where it lives and its id ("" when
    the start function failed: the result says how), its idle TTL and the start's result."""

    executor: str
    instance_id: str
    idle_ttl_ns: int
    result: CallResult


@dataclass(frozen=True)
class InstanceCall:
    """A call of a live instance, addressed to the tenant's instance with effective limits."""

    tenant: str
    instance_id: str
    export_name: str
    args: Sequence[WireMessage] = ()
    limits: CallLimits = UNSET
    input: bytes = b""  # empty: the instance's own


@dataclass(frozen=True)
class CompiledModule:
    """An executor's answer to PrepareModule: the module's exports."""

    exports: tuple[ExportRecord, ...]
