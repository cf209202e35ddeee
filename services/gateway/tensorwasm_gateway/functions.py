"""Deploy and invoke: store the module, compile it on an executor, record it, route calls."""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

import blake3
from tensorwasm.common.v1 import values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb

from tensorwasm_gateway.errors import (
    ExportNotFoundError,
    ExportRequiredError,
    FunctionAlreadyExistsError,
    InvalidNameError,
    InvalidWasmError,
    ModuleTooLargeError,
)
from tensorwasm_gateway.executors import ExecutorPool, ExecutorStream
from tensorwasm_gateway.registry import ExportRecord, FunctionRecord, Registry, now_ns

FUNCTION_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
WASM_MAGIC = b"\x00asm"
TYPE_NAMES = {
    values_pb2.VALUE_TYPE_I32: "i32",
    values_pb2.VALUE_TYPE_I64: "i64",
    values_pb2.VALUE_TYPE_F32: "f32",
    values_pb2.VALUE_TYPE_F64: "f64",
    values_pb2.VALUE_TYPE_V128: "v128",
    values_pb2.VALUE_TYPE_FUNCREF: "funcref",
    values_pb2.VALUE_TYPE_EXTERNREF: "externref",
}


class BlobPutter(Protocol):
    """What the deploy path needs of the snapshot store."""

    async def put(self, data: bytes, *, expected_digest: str = "") -> object:
        """Stores `data` under its digest."""


def function_id_from_name(name: str) -> str:
    """`functions/{id}` -> id, validating the pattern."""
    prefix, _, function_id = name.partition("/")
    if prefix != "functions" or not FUNCTION_ID.fullmatch(function_id):
        raise InvalidNameError(
            "name must be functions/{id} with id matching [a-z][a-z0-9-]{0,62}",
            metadata={"name": name[:200]},
        )
    return function_id


def validate_tenant(tenant: str) -> str:
    """The tenant id, validated."""
    if not TENANT_ID.fullmatch(tenant):
        raise InvalidNameError(
            "tenant must match [a-z0-9][a-z0-9_-]{0,62}", metadata={"tenant": tenant[:200]}
        )
    return tenant


class FunctionService:
    """The gateway's use cases over the registry, the store and the executors."""

    def __init__(
        self,
        registry: Registry,
        store: BlobPutter,
        executors: ExecutorPool,
        *,
        max_module_bytes: int,
    ) -> None:
        self._registry = registry
        self._store = store
        self._executors = executors
        self._max_module_bytes = max_module_bytes

    async def create(self, tenant: str, function_id: str, wasm: bytes) -> FunctionRecord:
        """Deploys a module: validated, stored, compiled by an executor, then recorded."""
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
        await self._store.put(wasm, expected_digest=digest)
        prepared = await self._executors.prepare(digest)
        exports = tuple(
            ExportRecord(
                e.name,
                tuple(TYPE_NAMES.get(t, "unknown") for t in e.signature.params),
                tuple(TYPE_NAMES.get(t, "unknown") for t in e.signature.results),
            )
            for e in prepared.exports
        )
        record = FunctionRecord(tenant, function_id, digest, len(wasm), exports, now_ns())
        await asyncio.to_thread(self._registry.insert, record)
        return record

    async def get(self, tenant: str, function_id: str) -> FunctionRecord:
        """One function of the tenant."""
        return await asyncio.to_thread(self._registry.get, tenant, function_id)

    async def list_page(self, tenant: str, after: str, limit: int) -> list[FunctionRecord]:
        """A page of the tenant's functions after `after`."""
        return await asyncio.to_thread(self._registry.list_page, tenant, after, limit)

    async def delete(self, tenant: str, function_id: str) -> None:
        """Removes the function's registry row (its blob stays for other references)."""
        await asyncio.to_thread(self._registry.delete, tenant, function_id)

    async def invoke(
        self, tenant: str, function_id: str, request: executor_pb.InvokeRequest
    ) -> tuple[executor_pb.InvokeResponse, str]:
        """Routes a call to an executor; returns its response and the export called."""
        export = await self._resolve(tenant, function_id, request)
        return await self._executors.invoke(request), export

    async def invoke_stream(
        self, tenant: str, function_id: str, request: executor_pb.InvokeRequest
    ) -> tuple[ExecutorStream, str]:
        """Resolves the call as `invoke` does (errors are raised here, before any event)
        and starts it; returns the executor's event stream and the export called."""
        export = await self._resolve(tenant, function_id, request)
        return self._executors.invoke_stream(request), export

    async def _resolve(
        self, tenant: str, function_id: str, request: executor_pb.InvokeRequest
    ) -> str:
        """Looks the function up, chooses the export and addresses `request` to it."""
        record = await self.get(tenant, function_id)
        export = choose_export(record, request.export_name)
        request.module_digest = record.module_digest
        request.export_name = export
        request.tenant = tenant
        return export


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
