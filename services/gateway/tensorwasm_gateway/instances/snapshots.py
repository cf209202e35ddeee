"""Snapshots of live instances: take one on the executor holding the instance, restore one on
any replica as a new instance of the same function, move record files in and out of the
store, and bring back a checkpointed instance whose executor died.

A snapshot is an INSTANCE_STATE record of the tenant in the snapshot store, variant
`{function_id}/{instance_id}/{label}`; the executor writes and reads it, the gateway
checks that it belongs to the function it is restored as.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tensorwasm.snapshot.v1 import snapshot_service_pb2 as store_pb
from tensorwasm_common.call_limits import UNSET
from tensorwasm_common.errors import (
    InstanceNotFoundError,
    Reason,
    ServiceError,
    SnapshotFunctionMismatchError,
    SnapshotKindMismatchError,
)
from tensorwasm_common.snapshot_client import INSTANCE_STATE, SnapshotClient

from tensorwasm_gateway.calls import InstanceLaunch, InstanceRestore
from tensorwasm_gateway.errors import FunctionNotFoundError
from tensorwasm_gateway.functions import FunctionService, InstanceRecord, Registry, now_ns
from tensorwasm_gateway.functions.registry import FunctionRecord
from tensorwasm_gateway.routing import ExecutorPool

__all__ = ["DEFAULT_MAX_RESTORE_BYTES", "InstanceSnapshotService", "SnapshotInfo"]

DEFAULT_MAX_RESTORE_BYTES = 256 << 20


@dataclass(frozen=True)
class SnapshotInfo:
    """An instance snapshot as the API shows it."""

    snapshot_id: str
    function_id: str
    instance_id: str
    module_digest: str
    state_size_bytes: int
    record_size_bytes: int
    signed: bool
    create_time_ns: int


def info_of(record: store_pb.Snapshot) -> SnapshotInfo:
    """The API's view of a store record (checked to be an instance state)."""
    if record.kind != INSTANCE_STATE:
        raise SnapshotKindMismatchError(
            f"snapshot {record.id} is not an instance snapshot",
            metadata={
                "expected": "SNAPSHOT_KIND_INSTANCE_STATE",
                "actual": store_pb.SnapshotKind.Name(record.kind),
            },
        )
    function_id, _, rest = record.variant.partition("/")
    return SnapshotInfo(
        snapshot_id=record.id,
        function_id=function_id,
        instance_id=rest.partition("/")[0],
        module_digest=record.source_digest,
        state_size_bytes=record.payload_size_bytes,
        record_size_bytes=record.record_size_bytes,
        signed=record.signed,
        create_time_ns=record.create_time.ToNanoseconds(),
    )


class InstanceSnapshotService:
    """The instance snapshot use cases."""

    def __init__(
        self,
        functions: FunctionService,
        registry: Registry,
        executors: ExecutorPool,
        store: SnapshotClient,
    ) -> None:
        self._functions, self._registry = functions, registry
        self._executors, self._store = executors, store

    async def snapshot(self, tenant: str, instance_id: str, max_restore_bytes: int) -> SnapshotInfo:
        """Captures the tenant's live instance on its executor into a new record."""
        instance = await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)
        limit = max_restore_bytes or DEFAULT_MAX_RESTORE_BYTES
        snapshot_id = await self._executors.snapshot_instance(
            instance.executor, tenant, instance_id, limit
        )
        return info_of(await self._store.get_snapshot(snapshot_id, tenant=tenant))

    async def restore(
        self,
        tenant: str,
        snapshot_id: str,
        *,
        function_id: str = "",
        idle_ttl_ns: int | None = None,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
    ) -> tuple[InstanceRecord, SnapshotInfo]:
        """Restores a snapshot as a new instance of its function on a routed replica.

        Raises:
            SnapshotNotFoundError, SnapshotKindMismatchError: no such instance snapshot.
            SnapshotFunctionMismatchError: not of `function_id` (when given), or its
                function is gone or runs another module now.
        """
        info = info_of(await self._store.get_snapshot(snapshot_id, tenant=tenant))
        if function_id and info.function_id != function_id:
            raise SnapshotFunctionMismatchError(
                f"snapshot {snapshot_id} is of function {info.function_id!r}, not {function_id!r}",
                metadata={
                    "function": function_id, "expected": function_id, "actual": info.function_id,
                },
            )  # fmt: skip
        function = await self._function_of(tenant, info)
        launch = self._launch(tenant, function, idle_ttl_ns)
        restore = InstanceRestore(
            snapshot_id=snapshot_id,
            max_restore_bytes=max_restore_bytes or DEFAULT_MAX_RESTORE_BYTES,
            require_signature=require_signature,
        )
        launched = await self._executors.restore_instance(launch, restore)
        record = InstanceRecord(
            tenant=tenant,
            instance_id=launched.instance_id,
            function_id=function.function_id,
            module_digest=function.module_digest,
            executor=launched.executor,
            idle_ttl_ns=launched.idle_ttl_ns,
            create_time_ns=now_ns(),
        )
        await asyncio.to_thread(self._registry.insert_instance, record)
        return record, info

    async def recover(self, instance: InstanceRecord) -> InstanceRecord | None:
        """Restores a checkpointed instance whose executor cannot be reached on another
        replica, under the same id, from its last checkpoint; -> its new record, or None
        when its function does not checkpoint (the caller reports the original error).

        Raises:
            InstanceNotFoundError: it checkpoints but has no checkpoint (it is forgotten).
        """
        try:
            function = await self._functions.get(instance.tenant, instance.function_id)
        except FunctionNotFoundError:
            return None
        config = self._functions.config_of(function)
        if not config.checkpoint_seconds or function.module_digest != instance.module_digest:
            return None
        launch = self._launch(instance.tenant, function, instance.idle_ttl_ns)
        restore = InstanceRestore(instance_id=instance.instance_id)
        try:
            launched = await self._executors.restore_instance(
                launch, restore, avoid=instance.executor
            )
        except ServiceError as exc:  # the executor's refusal, relayed with its reason
            if exc.reason is not Reason.SNAPSHOT_NOT_FOUND:
                raise
            await asyncio.to_thread(
                self._registry.delete_instance, instance.tenant, instance.instance_id
            )
            raise InstanceNotFoundError(
                f"instance {instance.instance_id} was lost with its executor before its "
                "first checkpoint",
                metadata={"instance_id": instance.instance_id},
            ) from None
        moved = InstanceRecord(
            tenant=instance.tenant,
            instance_id=instance.instance_id,
            function_id=instance.function_id,
            module_digest=instance.module_digest,
            executor=launched.executor,
            idle_ttl_ns=launched.idle_ttl_ns,
            create_time_ns=instance.create_time_ns,
        )
        await asyncio.to_thread(self._move, moved)
        return moved

    def _move(self, moved: InstanceRecord) -> None:
        self._registry.delete_instance(moved.tenant, moved.instance_id)
        self._registry.insert_instance(moved)

    async def export(
        self, tenant: str, snapshot_id: str
    ) -> tuple[SnapshotInfo, AsyncIterator[bytes]]:
        """The snapshot and its record file in chunks, as the store keeps it."""
        info = info_of(await self._store.get_snapshot(snapshot_id, tenant=tenant))

        async def chunks() -> AsyncIterator[bytes]:
            async for _, chunk in self._store.export_snapshot(snapshot_id, tenant=tenant):
                yield chunk

        return info, chunks()

    async def import_file(
        self,
        tenant: str,
        chunks: AsyncIterator[bytes],
        *,
        size_bytes: int,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
    ) -> SnapshotInfo:
        """Stores an exported record file as a new snapshot of the tenant, after the store
        checked it whole; one of a function the tenant no longer runs with that module is
        deleted again and refused (SNAPSHOT_FUNCTION_MISMATCH)."""
        record = await self._store.import_snapshot(
            chunks,
            size_bytes=size_bytes,
            expected_kind=INSTANCE_STATE,
            max_restore_bytes=max_restore_bytes or DEFAULT_MAX_RESTORE_BYTES,
            require_signature=require_signature,
            tenant=tenant,
        )
        info = info_of(record)
        try:
            await self._function_of(tenant, info)
        except SnapshotFunctionMismatchError:
            await self._store.delete_snapshot(record.id, tenant=tenant)
            raise
        return info

    async def _function_of(self, tenant: str, info: SnapshotInfo) -> FunctionRecord:
        """The snapshot's function, which must still run the snapshot's module."""
        try:
            function = await self._functions.get(tenant, info.function_id)
        except FunctionNotFoundError:
            raise SnapshotFunctionMismatchError(
                f"the snapshot's function {info.function_id!r} does not exist",
                metadata={"function": info.function_id, "expected": info.module_digest,
                          "actual": ""},
            ) from None  # fmt: skip
        if function.module_digest != info.module_digest:
            raise SnapshotFunctionMismatchError(
                f"function {info.function_id!r} runs another module than the snapshot's",
                metadata={"function": info.function_id, "expected": info.module_digest,
                          "actual": function.module_digest},
            )  # fmt: skip
        return function

    def _launch(
        self, tenant: str, function: FunctionRecord, idle_ttl_ns: int | None
    ) -> InstanceLaunch:
        config = self._functions.config_of(function)
        return InstanceLaunch(
            target=self._functions.target(tenant, function, config),
            limits=self._functions.limits_for(tenant, UNSET, config),
            idle_ttl_ns=idle_ttl_ns,
            function_id=function.function_id,
            checkpoint_seconds=config.checkpoint_seconds,
        )
