"""Live instances: start one on an executor, record where it lives, call and end it there."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from tensorwasm_common.call_limits import UNSET, CallLimits
from tensorwasm_common.errors import InvalidNameError, Reason, ServiceError

from tensorwasm_gateway.calls import (
    DEFAULT_CONFIG,
    Call,
    CallResult,
    InstanceCall,
    InstanceLaunch,
)
from tensorwasm_gateway.errors import FunctionNotFoundError, HolderUnreachableError
from tensorwasm_gateway.functions import (
    FunctionService,
    InstanceRecord,
    Registry,
    now_ns,
)
from tensorwasm_gateway.instances.snapshots import InstanceSnapshotService
from tensorwasm_gateway.routing import ExecutorPool

INSTANCE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class InstanceSpec:
    """An instance as its caller asks for it: the start function's stdin and limits, and
    how long it may stay idle (None: the executor's default)."""

    stdin: bytes = b""
    limits: CallLimits = UNSET
    idle_ttl_ns: int | None = None
    input: bytes = b""  # the instance's wasi:tensor input


def instance_id_from_name(name: str) -> str:
    """`instances/{id}` -> id, validating the pattern."""
    prefix, _, instance_id = name.partition("/")
    if prefix != "instances" or not INSTANCE_ID.fullmatch(instance_id):
        raise InvalidNameError(
            "name must be instances/{id} with id of 32 lowercase hex digits",
            metadata={"name": name[:200]},
        )
    return instance_id


class InstanceService:
    """The instance use cases: an instance is pinned to the executor that holds it, so
    every call after creation goes to that executor (no routing)."""

    def __init__(
        self,
        functions: FunctionService,
        registry: Registry,
        executors: ExecutorPool,
        snapshots: InstanceSnapshotService | None = None,
    ) -> None:
        self._functions = functions
        self._registry = registry
        self._executors = executors
        self.snapshots = snapshots

    async def create(
        self, tenant: str, function_id: str, spec: InstanceSpec
    ) -> tuple[InstanceRecord | None, CallResult]:
        """Starts an instance on an executor and records where it lives.

        Returns (the record, the start function's result); the record is None when the
        start function failed (the result's outcome says how).
        """
        record = await self._functions.get(tenant, function_id)
        config = self._functions.config_of(record)
        launch = InstanceLaunch(
            target=self._functions.target(tenant, record, config),
            stdin=spec.stdin,
            limits=self._functions.limits_for(tenant, spec.limits, config),
            idle_ttl_ns=spec.idle_ttl_ns,
            input=spec.input,
            function_id=function_id,
            checkpoint_seconds=config.checkpoint_seconds,
        )
        launched = await self._executors.create_instance(launch)
        if not launched.instance_id:
            return None, launched.result
        instance = InstanceRecord(
            tenant=tenant,
            instance_id=launched.instance_id,
            function_id=function_id,
            module_digest=record.module_digest,
            executor=launched.executor,
            idle_ttl_ns=launched.idle_ttl_ns,
            create_time_ns=now_ns(),
        )
        await asyncio.to_thread(self._registry.insert_instance, instance)
        return instance, launched.result

    async def get(self, tenant: str, instance_id: str) -> InstanceRecord:
        """One live instance of the tenant, as recorded."""
        return await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)

    async def list_page(self, tenant: str, after: str, limit: int) -> list[InstanceRecord]:
        """Up to `limit` of the tenant's recorded instances after id `after`."""
        return await asyncio.to_thread(self._registry.list_instances, tenant, after, limit)

    async def call(self, tenant: str, instance_id: str, call: Call) -> tuple[CallResult, str]:
        """Calls a live instance on its executor; returns the result and the export.

        An instance the executor no longer has (expired, or its executor restarted) is
        forgotten here too and reported as INSTANCE_NOT_FOUND. An instance of a
        checkpointed function whose executor cannot be reached is first restored on
        another replica from its last checkpoint (`InstanceSnapshotService.recover`).
        """
        instance = self._registry.lookup_instance(tenant, instance_id)  # inline on SQLite
        if instance is None:
            instance = await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)
        try:
            function = await self._functions.record(tenant, instance.function_id)
        except FunctionNotFoundError:  # deleted since: the instance lives on
            export = call.export_name
            limits = self._functions.limits_for(tenant, call.limits, DEFAULT_CONFIG)
        else:
            _, export, limits = self._functions.call_terms(tenant, function, call)
        addressed = InstanceCall(
            tenant=tenant,
            instance_id=instance_id,
            export_name=export,
            args=call.args,
            limits=limits,
            input=call.input,
        )
        try:
            try:
                result = await self._executors.call_instance(instance.executor, addressed)
            except HolderUnreachableError:
                moved = await self.snapshots.recover(instance) if self.snapshots else None
                if moved is None:
                    raise
                result = await self._executors.call_instance(moved.executor, addressed)
        except ServiceError as exc:
            if exc.reason is Reason.INSTANCE_NOT_FOUND:
                await asyncio.to_thread(self._registry.delete_instance, tenant, instance_id)
            raise
        return result, export

    async def delete(self, tenant: str, instance_id: str) -> None:
        """Terminates the instance and forgets it (one already gone on its executor is
        simply forgotten)."""
        instance = await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)
        try:
            await self._executors.delete_instance(instance.executor, tenant, instance_id)
        except ServiceError as exc:
            if exc.reason is not Reason.INSTANCE_NOT_FOUND:
                raise
        await asyncio.to_thread(self._registry.delete_instance, tenant, instance_id)
