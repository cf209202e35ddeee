"""Deploy and invoke: store the module, compile it on an executor, record it, route calls."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import blake3
from tensorwasm_common import offload_section
from tensorwasm_common.call_limits import UNSET, CallLimits, resolve_call_limits
from tensorwasm_common.errors import (
    ExportNotFoundError,
    InitExportInvalidError,
    InvalidArgumentError,
    InvalidNameError,
    InvalidWasmError,
)
from tensorwasm_common.wasi_config import check_wasi_config

from tensorwasm_gateway.calls import (
    DEFAULT_CONFIG,
    AddressedCall,
    Call,
    CallResult,
    ExportRecord,
    FunctionConfig,
    FunctionConfigCodec,
    OffloadDeclaration,
    Target,
)
from tensorwasm_gateway.errors import (
    ExportRequiredError,
    FunctionAlreadyExistsError,
    ModuleTooLargeError,
)
from tensorwasm_gateway.functions.artifacts import (
    ArtifactRecords,
    release_unused_artifacts,
    release_unused_images,
)
from tensorwasm_gateway.functions.references import References
from tensorwasm_gateway.functions.registry import FunctionRecord, Registry, now_ns
from tensorwasm_gateway.functions.upload import ModuleUpload, UploadHeader
from tensorwasm_gateway.limits import TenantCeilings
from tensorwasm_gateway.routing import ExecutorPool, ExecutorStream

FUNCTION_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


def _check_function_id(function_id: str) -> None:
    if not FUNCTION_ID.fullmatch(function_id):
        raise InvalidNameError(
            "function_id must match [a-z][a-z0-9-]{0,62}",
            metadata={"function_id": function_id[:200]},
        )


_log = logging.getLogger(__name__)
# Functions whose derived call data (`_Addressing`) is kept; past it, all are forgotten.
_ADDRESSING_ENTRIES = 4096
WASM_MAGIC = b"\x00asm"
DEFAULT_INIT_EXPORT = "wizer.initialize"
MAX_DISPLAY_NAME_CHARS = 256
MAX_CHECKPOINT_SECONDS = 86400
# The init exports a deploy runs unasked, the first one exported as `() -> ()`: Wizer's,
# then a WASI reactor's `_initialize` (clang -mexec-model=reactor), which must run once
# before any other export: every call then starts from the state it left.
DEFAULT_INIT_EXPORTS = (DEFAULT_INIT_EXPORT, "_initialize")


@dataclass(frozen=True)
class _Addressing:
    """What every call of one function record shares: its configuration, target, export
    names and the limits of a call that asks for none (the tenant's ceilings are fixed)."""

    record: FunctionRecord
    config: FunctionConfig
    target: Target
    export_names: frozenset[str]
    default_limits: CallLimits


class BlobPutter(Protocol):
    """What the deploy path needs of the snapshot store: a function's module is stored
    with the tenant's reference `functions/{id}`, which deleting the function removes
    (the store collects objects nobody references)."""

    async def put(
        self,
        data: bytes,
        *,
        expected_digest: str = "",
        ref_name: str = "",
        tenant: str | None = None,
    ) -> object:
        """Stores `data` under its digest, referenced as `ref_name` for `tenant`."""

    async def remove_ref(self, digest: str, ref_name: str, *, tenant: str | None = None) -> bool:
        """Removes the tenant's reference `ref_name` to `digest`."""


def function_id_from_name(name: str) -> str:
    """`functions/{id}` -> id, validating the pattern."""
    prefix, _, function_id = name.partition("/")
    if prefix != "functions" or not FUNCTION_ID.fullmatch(function_id):
        raise InvalidNameError(
            "name must be functions/{id} with id matching [a-z][a-z0-9-]{0,62}",
            metadata={"name": name[:200]},
        )
    return function_id


def resolve_init_export(config: FunctionConfig, exports: Sequence[ExportRecord]) -> str:
    """The init export a deploy asks for: the named one (checked: an exported function
    `() -> ()`), none with `no_init`, else `wizer.initialize` or (a WASI reactor's)
    `_initialize`, the first that is such an export.

    Raises:
        InitExportInvalidError: the named export is missing or not `() -> ()`, or both
            `init_export` and `no_init` are set.
    """
    if config.no_init:
        if config.init_export:
            raise InitExportInvalidError(
                "init_export and no_init exclude each other",
                metadata={"export": config.init_export[:200]},
            )
        return ""
    by_name = {e.name: e for e in exports}
    if not config.init_export:
        for name in DEFAULT_INIT_EXPORTS:
            default = by_name.get(name)
            if default is not None and not default.params and not default.results:
                return name
        return ""
    export = by_name.get(config.init_export)
    if export is None or export.params or export.results:
        raise InitExportInvalidError(
            f"init export {config.init_export!r} must be an exported function taking and "
            "returning nothing",
            metadata={"export": config.init_export[:200]},
        )
    return config.init_export


def offload_declarations(
    config: FunctionConfig, wasm: bytes, exports: Sequence[ExportRecord]
) -> tuple[OffloadDeclaration, ...]:
    """The module's auto-offload declarations when the deploy asks for them (none else),
    each checked against the compiled exports.

    Raises:
        OffloadDeclarationMalformedError, OffloadOpUnknownError,
        OffloadSignatureMismatchError: see `tensorwasm_common.offload_section`.
    """
    if not config.auto_offload:
        return ()
    signatures = {e.name: (e.params, e.results) for e in exports}
    declared = []
    for item in offload_section.parse_section(wasm):
        offload_section.check_signature(item, signatures)
        declared.append(OffloadDeclaration(item.export_name, item.op, item.args))
    return tuple(declared)


class FunctionService:
    """The gateway's use cases over the registry, the store and the executors."""

    def __init__(
        self,
        registry: Registry,
        store: BlobPutter,
        executors: ExecutorPool,
        *,
        max_module_bytes: int,
        configs: FunctionConfigCodec,
        ceilings: TenantCeilings | None = None,
        references: References | None = None,
        artifacts: ArtifactRecords | None = None,
    ) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self._store = store
        self._executors = executors
        self._max_module_bytes = max_module_bytes
        self._configs = configs
        self._ceilings = ceilings or TenantCeilings()
        self._addressing: dict[tuple[str, str], _Addressing] = {}
        self.references = references or References(registry, store)

    async def begin_upload(self, tenant: str, header: UploadHeader) -> ModuleUpload:
        """An upload of a module in chunks, after the checks its header allows (the id,
        a taken id, the declared size), so a doomed upload is refused before its bytes."""
        _check_function_id(header.function_id)
        if await asyncio.to_thread(self._registry.exists, tenant, header.function_id):
            raise FunctionAlreadyExistsError(
                f"function {header.function_id!r} already exists",
                metadata={"function_id": header.function_id},
            )
        return ModuleUpload(header, self._max_module_bytes)

    async def create(
        self,
        tenant: str,
        function_id: str,
        wasm: bytes,
        config: FunctionConfig = DEFAULT_CONFIG,
    ) -> FunctionRecord:
        """Deploys a module: validated, stored, compiled by an executor, then recorded.

        The tenant's reference to the module is taken as the module is stored; every
        failure after that releases it (see `References`), so a failed deploy leaves
        nothing charged to the tenant.
        """
        check_wasi_config(config.wasi)
        config.default_limits.check("config.default_limits")
        if config.no_init and config.init_export:
            raise InitExportInvalidError(
                "config.init_export and config.no_init exclude each other",
                metadata={"export": config.init_export[:200]},
            )
        if len(config.display_name) > MAX_DISPLAY_NAME_CHARS:
            raise InvalidNameError(
                f"display_name is over {MAX_DISPLAY_NAME_CHARS} characters",
                metadata={"field": "config.display_name"},
            )
        if config.checkpoint_seconds > MAX_CHECKPOINT_SECONDS:
            raise InvalidArgumentError(
                f"checkpoint_seconds is over {MAX_CHECKPOINT_SECONDS}",
                metadata={"field": "config.checkpoint_seconds"},
            )
        _check_function_id(function_id)
        if len(wasm) > self._max_module_bytes:
            raise ModuleTooLargeError(
                f"module is {len(wasm)} bytes; the limit is {self._max_module_bytes}",
                metadata={"limit_bytes": str(self._max_module_bytes)},
            )
        if not wasm.startswith(WASM_MAGIC):
            raise InvalidWasmError("module bytes do not start with the wasm magic number")
        if await asyncio.to_thread(self._registry.exists, tenant, function_id):
            raise FunctionAlreadyExistsError(
                f"function {function_id!r} already exists", metadata={"function_id": function_id}
            )
        digest = blake3.blake3(wasm).hexdigest()
        reference = f"functions/{function_id}"
        async with self.references.taking(tenant, digest, reference):
            keep = False
            try:
                await self._store.put(
                    wasm, expected_digest=digest, ref_name=reference, tenant=tenant
                )
                record = await self._compile(tenant, function_id, wasm, digest, config)
                try:
                    await asyncio.to_thread(self._registry.insert, record)
                except FunctionAlreadyExistsError:  # a concurrent deploy of the same id won
                    winner = await self.get(tenant, function_id)
                    keep = winner.module_digest == digest  # the same reference: the winner's
                    raise
                keep = True
                return record
            finally:
                if not keep:
                    await self.references.release(tenant, digest, reference)

    async def _compile(
        self, tenant: str, function_id: str, wasm: bytes, digest: str, config: FunctionConfig
    ) -> FunctionRecord:
        """Compiles the stored module (running its init export) and checks its offload
        declarations; the record to keep."""
        # A read-only directory is checked against the tenant's grant now, not at each call.
        wasi = config.wasi if config.wasi.read_only_dir else None
        prepared = await self._executors.prepare(digest, tenant=tenant, wasi=wasi)
        init_export = resolve_init_export(config, prepared.exports)
        if init_export:  # run init now: a failing init fails the deploy, not a call
            await self._executors.prepare(digest, init_export=init_export, tenant=tenant)
        deployed = replace(
            config,
            init_export=init_export,
            no_init=not init_export,
            offloads=offload_declarations(config, wasm, prepared.exports),
        )
        return FunctionRecord(
            tenant,
            function_id,
            digest,
            len(wasm),
            prepared.exports,
            now_ns(),
            self._configs.encode(deployed),
        )

    async def get(self, tenant: str, function_id: str) -> FunctionRecord:
        """One function of the tenant."""
        return await asyncio.to_thread(self._registry.get, tenant, function_id)

    async def list_page(self, tenant: str, after: str, limit: int) -> list[FunctionRecord]:
        """A page of the tenant's functions after `after`."""
        return await asyncio.to_thread(self._registry.list_page, tenant, after, limit)

    async def delete(self, tenant: str, function_id: str) -> None:
        """Removes the function's registry row, then its reference to the module (the
        store keeps the module while other functions or tenants reference it)."""
        record = await self.get(tenant, function_id)
        await asyncio.to_thread(self._registry.delete, tenant, function_id)
        await self.references.release(tenant, record.module_digest, f"functions/{function_id}")
        if self._artifacts is not None:
            await release_unused_artifacts(self._registry, self._artifacts, record.module_digest)
            await release_unused_images(
                self._registry, self._artifacts, tenant, record.module_digest
            )

    def config_of(self, record: FunctionRecord) -> FunctionConfig:
        """The function's configuration."""
        return self._configs.decode(record.config) if record.config else DEFAULT_CONFIG

    async def invoke(self, tenant: str, function_id: str, call: Call) -> tuple[CallResult, str]:
        """Routes a call to an executor; returns its result and the export called."""
        addressed = await self.resolve(tenant, function_id, call)
        return await self._executors.invoke(addressed), addressed.export_name

    async def invoke_resolved(self, call: AddressedCall) -> CallResult:
        """Runs a call that `resolve` addressed (async invocations resolve first, run later)."""
        return await self._executors.invoke(call)

    async def invoke_stream(
        self, tenant: str, function_id: str, call: Call
    ) -> tuple[ExecutorStream, str]:
        """Resolves the call as `invoke` does (errors are raised here, before any event)
        and starts it; returns the executor's event stream and the export called."""
        addressed = await self.resolve(tenant, function_id, call)
        return await self._executors.invoke_stream(addressed), addressed.export_name

    async def resolve(self, tenant: str, function_id: str, call: Call) -> AddressedCall:
        """Looks the function up, chooses the export and addresses the call to it."""
        record = self._registry.lookup(tenant, function_id)  # inline: see Registry.lookup
        if record is None:  # not cached (PostgreSQL): one read, off the event loop
            record = await asyncio.to_thread(self._registry.load, tenant, function_id)
        addressing, export, limits = self.call_terms(tenant, record, call)
        return AddressedCall(
            target=addressing.target,
            export_name=export,
            args=call.args,
            stdin=call.stdin,
            limits=limits,
            input=call.input,
        )

    async def record(self, tenant: str, function_id: str) -> FunctionRecord:
        """The function as calls see it: read inline where the registry can (see
        `Registry.lookup`), else once off the event loop (FunctionNotFoundError)."""
        record = self._registry.lookup(tenant, function_id)
        if record is None:
            record = await asyncio.to_thread(self._registry.load, tenant, function_id)
        return record

    def call_terms(
        self, tenant: str, record: FunctionRecord, call: Call
    ) -> tuple[_Addressing, str, CallLimits]:
        """What a call of the function runs: the record's call data (derived once per
        record), the export chosen (or the error naming the exports) and the limits."""
        addressing = self._addressing_of(tenant, record)
        requested = call.export_name
        if requested and requested in addressing.export_names:
            export = requested
        else:  # the default export, or the error naming what is available
            export = choose_export(record, requested)
        if call.limits is UNSET:
            limits = addressing.default_limits
        else:
            limits = self.limits_for(tenant, call.limits, addressing.config)
        return addressing, export, limits

    def _addressing_of(self, tenant: str, record: FunctionRecord) -> _Addressing:
        """The record's call data, derived once: the registry hands out the same record
        object while the function's row is unchanged (a new one after a redeploy), so an
        identity check tells whether what was derived still holds."""
        key = (tenant, record.function_id)
        cached = self._addressing.get(key)
        if cached is not None and cached.record is record:
            return cached
        config = self.config_of(record)
        addressing = _Addressing(
            record=record,
            config=config,
            target=self.target(tenant, record, config),
            export_names=frozenset(e.name for e in record.exports),
            default_limits=self.limits_for(tenant, UNSET, config),
        )
        if len(self._addressing) >= _ADDRESSING_ENTRIES:
            self._addressing.clear()
        self._addressing[key] = addressing
        return addressing

    def target(self, tenant: str, record: FunctionRecord, config: FunctionConfig) -> Target:
        """Where the function's calls run: its module, WASI view, image and offloads."""
        return Target(
            tenant=tenant,
            module_digest=record.module_digest,
            wasi=config.wasi,
            init_export=config.init_export,
            offloads=config.offloads,  # kept only with auto_offload (`offload_declarations`)
        )

    def limits_for(self, tenant: str, requested: CallLimits, config: FunctionConfig) -> CallLimits:
        """The limits a call of the tenant runs with: the request's, the function's
        defaults and the tenant's ceiling (see `tensorwasm_common.call_limits`)."""
        return resolve_call_limits(
            requested, defaults=config.default_limits, ceiling=self._ceilings.of(tenant)
        )


def choose_export(record: FunctionRecord, requested: str) -> str:
    """The named export, else `_start`, else `main` (the original's discovery), else the
    only exported function."""
    names = [e.name for e in record.exports]
    if requested:
        if requested not in names:
            raise ExportNotFoundError(
                f"function has no export {requested!r}",
                metadata={"export": requested[:200], "available": ",".join(names)[:1000]},
            )
        return requested
    for default in ("_start", "main"):
        if default in names:
            return default
    if len(names) == 1:
        return names[0]
    raise ExportRequiredError(
        "the function has several exports; name one", metadata={"available": ",".join(names)[:1000]}
    )
