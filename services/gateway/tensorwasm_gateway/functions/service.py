"""Deploy and invoke: store the module, compile it on an executor, record it, route calls."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Protocol

import blake3
from tensorwasm.common.v1 import invocation_pb2, values_json, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm_common import offload_section
from tensorwasm_common.errors import (
    ExportNotFoundError,
    InitExportInvalidError,
    InvalidNameError,
    InvalidWasmError,
    ServiceError,
)
from tensorwasm_common.wasi_config import check_wasi_config

from tensorwasm_gateway.errors import (
    ExportRequiredError,
    FunctionAlreadyExistsError,
    ModuleTooLargeError,
)
from tensorwasm_gateway.functions.artifacts import ArtifactRecords, release_unused_artifacts
from tensorwasm_gateway.functions.registry import (
    ExportRecord,
    FunctionRecord,
    Registry,
    now_ns,
)
from tensorwasm_gateway.limits import TenantCeilings, check_limits, effective_limits
from tensorwasm_gateway.routing import ExecutorPool, ExecutorStream

FUNCTION_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_log = logging.getLogger(__name__)
WASM_MAGIC = b"\x00asm"
DEFAULT_INIT_EXPORT = "wizer.initialize"
TYPE_NAMES = values_json.TYPE_NAMES


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


def function_config(record: FunctionRecord) -> gateway_pb.FunctionConfig:
    """The function's stored configuration."""
    return gateway_pb.FunctionConfig.FromString(record.config)


def resolve_init_export(
    config: gateway_pb.FunctionConfig, exports: Sequence[values_pb2.ExportedFunction]
) -> str:
    """The init export a deploy asks for: the named one (checked: an exported function
    `() -> ()`), none with `no_init`, else `wizer.initialize` when it is such an export.

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
        default = by_name.get(DEFAULT_INIT_EXPORT)
        if default is None or default.signature.params or default.signature.results:
            return ""
        return DEFAULT_INIT_EXPORT
    export = by_name.get(config.init_export)
    if export is None or export.signature.params or export.signature.results:
        raise InitExportInvalidError(
            f"init export {config.init_export!r} must be an exported function taking and "
            "returning nothing",
            metadata={"export": config.init_export[:200]},
        )
    return config.init_export


def offload_declarations(
    config: gateway_pb.FunctionConfig,
    wasm: bytes,
    exports: Sequence[values_pb2.ExportedFunction],
) -> list[invocation_pb2.OffloadedExport]:
    """The module's auto-offload declarations when the deploy asks for them (none else),
    each checked against the compiled exports.

    Raises:
        OffloadDeclarationMalformedError, OffloadOpUnknownError,
        OffloadSignatureMismatchError: see `tensorwasm_common.offload_section`.
    """
    if not config.auto_offload:
        return []
    signatures = {
        e.name: (
            [TYPE_NAMES.get(t, "unknown") for t in e.signature.params],
            [TYPE_NAMES.get(t, "unknown") for t in e.signature.results],
        )
        for e in exports
    }
    declared = []
    for item in offload_section.parse_section(wasm):
        offload_section.check_signature(item, signatures)
        declared.append(
            invocation_pb2.OffloadedExport(export_name=item.export_name, op=item.op, args=item.args)
        )
    return declared


class FunctionService:
    """The gateway's use cases over the registry, the store and the executors."""

    def __init__(
        self,
        registry: Registry,
        store: BlobPutter,
        executors: ExecutorPool,
        *,
        max_module_bytes: int,
        ceilings: TenantCeilings | None = None,
        artifacts: ArtifactRecords | None = None,
    ) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self._store = store
        self._executors = executors
        self._max_module_bytes = max_module_bytes
        self._ceilings = ceilings or TenantCeilings()

    async def create(
        self,
        tenant: str,
        function_id: str,
        wasm: bytes,
        config: gateway_pb.FunctionConfig | None = None,
    ) -> FunctionRecord:
        """Deploys a module: validated, stored, compiled by an executor, then recorded."""
        config = config or gateway_pb.FunctionConfig()
        check_wasi_config(config.wasi)
        check_limits(config.default_limits, "config.default_limits")
        if config.no_init and config.init_export:
            raise InitExportInvalidError(
                "config.init_export and config.no_init exclude each other",
                metadata={"export": config.init_export[:200]},
            )
        if not FUNCTION_ID.fullmatch(function_id):
            raise InvalidNameError(
                "function_id must match [a-z][a-z0-9-]{0,62}",
                metadata={"function_id": function_id[:200]},
            )
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
        await self._store.put(wasm, expected_digest=digest, ref_name=reference, tenant=tenant)
        prepared = await self._executors.prepare(digest)
        try:
            init_export = resolve_init_export(config, prepared.exports)
            if init_export:  # run init now: a failing init fails the deploy, not a call
                await self._executors.prepare(digest, init_export=init_export, tenant=tenant)
        except ServiceError:
            await self._release(tenant, digest, reference)
            raise
        config.init_export, config.no_init = init_export, not init_export
        try:
            declared = offload_declarations(config, wasm, prepared.exports)
        except ServiceError:
            await self._release(tenant, digest, reference)
            raise
        del config.offloads[:]
        config.offloads.extend(declared)
        exports = tuple(
            ExportRecord(
                e.name,
                tuple(TYPE_NAMES.get(t, "unknown") for t in e.signature.params),
                tuple(TYPE_NAMES.get(t, "unknown") for t in e.signature.results),
            )
            for e in prepared.exports
        )
        record = FunctionRecord(
            tenant, function_id, digest, len(wasm), exports, now_ns(), config.SerializeToString()
        )
        try:
            await asyncio.to_thread(self._registry.insert, record)
        except FunctionAlreadyExistsError:  # a concurrent deploy of the same id won
            winner = await self.get(tenant, function_id)
            if winner.module_digest != digest:  # ours is not the winner's: drop our reference
                await self._release(tenant, digest, reference)
            raise
        return record

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
        await self._release(tenant, record.module_digest, f"functions/{function_id}")
        if self._artifacts is not None:
            await release_unused_artifacts(self._registry, self._artifacts, record.module_digest)

    async def _release(self, tenant: str, digest: str, reference: str) -> None:
        try:
            await self._store.remove_ref(digest, reference, tenant=tenant)
        except ServiceError as exc:  # the function is gone either way; the blob leaks
            _log.warning(
                "could not remove reference %s to %s: %s", reference, digest, exc,
                extra={"tenant": tenant},
            )  # fmt: skip

    async def invoke(
        self, tenant: str, function_id: str, request: executor_pb.InvokeRequest
    ) -> tuple[executor_pb.InvokeResponse, str]:
        """Routes a call to an executor; returns its response and the export called."""
        export = await self.resolve(tenant, function_id, request)
        return await self._executors.invoke(request), export

    async def invoke_resolved(
        self, request: executor_pb.InvokeRequest
    ) -> executor_pb.InvokeResponse:
        """Runs a call that `resolve` addressed (async invocations resolve first, run later)."""
        return await self._executors.invoke(request)

    async def invoke_stream(
        self, tenant: str, function_id: str, request: executor_pb.InvokeRequest
    ) -> tuple[ExecutorStream, str]:
        """Resolves the call as `invoke` does (errors are raised here, before any event)
        and starts it; returns the executor's event stream and the export called."""
        export = await self.resolve(tenant, function_id, request)
        return await self._executors.invoke_stream(request), export

    async def resolve(
        self, tenant: str, function_id: str, request: executor_pb.InvokeRequest
    ) -> str:
        """Looks the function up, chooses the export and addresses `request` to it."""
        record = self._registry.lookup(tenant, function_id)  # inline: see Registry.lookup
        request.export_name = choose_export(record, request.export_name)
        self.address(tenant, record, request)
        return request.export_name

    def address(
        self,
        tenant: str,
        record: FunctionRecord,
        request: executor_pb.InvokeRequest | executor_pb.CreateInstanceRequest,
    ) -> None:
        """Sets the module, tenant, WASI view and effective limits of an executor request."""
        config = function_config(record)
        request.module_digest = record.module_digest
        request.tenant = tenant
        request.wasi.CopyFrom(config.wasi)
        request.init_export = config.init_export
        if config.offloads:  # kept only with auto_offload (see `offload_declarations`)
            request.offloads.extend(config.offloads)
        request.limits.CopyFrom(self.limits_for(tenant, request.limits, config))

    def limits_for(
        self,
        tenant: str,
        requested: invocation_pb2.InvocationLimits,
        config: gateway_pb.FunctionConfig,
    ) -> invocation_pb2.InvocationLimits:
        """The limits a call of the tenant runs with: the request's, the function's
        defaults and the tenant's ceiling (see `tensorwasm_gateway.limits`)."""
        return effective_limits(requested, config.default_limits, self._ceilings.of(tenant))


def choose_export(record: FunctionRecord, requested: str) -> str:
    """The named export, else the only exported function, else `_start`."""
    names = [e.name for e in record.exports]
    if requested:
        if requested not in names:
            raise ExportNotFoundError(
                f"function has no export {requested!r}",
                metadata={"export": requested[:200], "available": ",".join(names)[:1000]},
            )
        return requested
    if len(names) == 1:
        return names[0]
    if "_start" in names:
        return "_start"
    raise ExportRequiredError(
        "the function has several exports; name one", metadata={"available": ",".join(names)[:1000]}
    )
