"""Live instances: start one on an executor, record where it lives, call and end it there."""

from __future__ import annotations

import asyncio
import re

from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm_common.errors import InvalidNameError, Reason, ServiceError

from tensorwasm_gateway.errors import FunctionNotFoundError
from tensorwasm_gateway.functions import (
    FunctionService,
    InstanceRecord,
    Registry,
    choose_export,
    function_config,
    now_ns,
)
from tensorwasm_gateway.routing import ExecutorPool

INSTANCE_ID = re.compile(r"[0-9a-f]{32}")


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
        self, functions: FunctionService, registry: Registry, executors: ExecutorPool
    ) -> None:
        self._functions = functions
        self._registry = registry
        self._executors = executors

    async def create(
        self, tenant: str, function_id: str, request: executor_pb.CreateInstanceRequest
    ) -> tuple[InstanceRecord | None, executor_pb.CreateInstanceResponse]:
        """Starts an instance on an executor and records where it lives.

        Returns (the record, the executor's response); the record is None when the
        start function failed (the response's outcome says how).
        """
        record = await self._functions.get(tenant, function_id)
        self._functions.address(tenant, record, request)
        address, response = await self._executors.create_instance(request)
        if not response.instance_id:
            return None, response
        instance = InstanceRecord(
            tenant=tenant,
            instance_id=response.instance_id,
            function_id=function_id,
            module_digest=record.module_digest,
            executor=address,
            idle_ttl_ns=response.idle_ttl.ToNanoseconds(),
            create_time_ns=now_ns(),
        )
        await asyncio.to_thread(self._registry.insert_instance, instance)
        return instance, response

    async def get(self, tenant: str, instance_id: str) -> InstanceRecord:
        """One live instance of the tenant, as recorded."""
        return await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)

    async def call(
        self, tenant: str, instance_id: str, request: executor_pb.CallInstanceRequest
    ) -> tuple[executor_pb.CallInstanceResponse, str]:
        """Calls a live instance on its executor; returns the response and the export.

        An instance the executor no longer has (expired, or its executor restarted) is
        forgotten here too and reported as INSTANCE_NOT_FOUND.
        """
        instance = await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)
        try:
            function = await self._functions.get(tenant, instance.function_id)
        except FunctionNotFoundError:  # deleted since: the instance lives on
            config, export = gateway_pb.FunctionConfig(), request.export_name
        else:
            config, export = function_config(function), choose_export(function, request.export_name)
        request.instance_id = instance_id
        request.tenant = tenant
        request.export_name = export
        request.limits.CopyFrom(self._functions.limits_for(tenant, request.limits, config))
        try:
            response = await self._executors.call_instance(instance.executor, request)
        except ServiceError as exc:
            if exc.reason is Reason.INSTANCE_NOT_FOUND:
                await asyncio.to_thread(self._registry.delete_instance, tenant, instance_id)
            raise
        return response, export

    async def delete(self, tenant: str, instance_id: str) -> None:
        """Terminates the instance and forgets it (one already gone on its executor is
        simply forgotten)."""
        instance = await asyncio.to_thread(self._registry.get_instance, tenant, instance_id)
        request = executor_pb.DeleteInstanceRequest(instance_id=instance_id, tenant=tenant)
        try:
            await self._executors.delete_instance(instance.executor, request)
        except ServiceError as exc:
            if exc.reason is not Reason.INSTANCE_NOT_FOUND:
                raise
        await asyncio.to_thread(self._registry.delete_instance, tenant, instance_id)
