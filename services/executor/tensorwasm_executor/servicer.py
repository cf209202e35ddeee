"""ExecutorService: proto <-> sandbox translation; guests run on the worker pool."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import DEFAULT_TENANT
from tensorwasm_common.errors import InvalidArgumentError

from tensorwasm_executor.admission import Admission
from tensorwasm_executor.convert import export_to_wire, outcome_to_wire, value_from_wire
from tensorwasm_executor.modules import ModuleProvider
from tensorwasm_executor.sandbox import Sandbox
from tensorwasm_executor.settings import ExecutorSettings


class ExecutorServicer(pb_grpc.ExecutorServiceServicer):
    """Prepares modules and runs guest calls."""

    def __init__(
        self,
        settings: ExecutorSettings,
        sandbox: Sandbox,
        modules: ModuleProvider,
        workers: ThreadPoolExecutor,
        admission: Admission,
    ) -> None:
        self._settings = settings
        self._sandbox = sandbox
        self._modules = modules
        self._workers = workers
        self._admission = admission

    async def PrepareModule(
        self, request: pb.PrepareModuleRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrepareModuleResponse:
        module, cache_hit = await self._modules.get(request.module_digest)
        return pb.PrepareModuleResponse(
            exports=[export_to_wire(e) for e in module.exports],
            engine_fingerprint=self._sandbox.engine_fingerprint,
            cache_hit=cache_hit,
        )

    async def Invoke(
        self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvokeResponse:
        tenant = request.tenant or DEFAULT_TENANT
        with self._admission.admit(tenant):
            module, _ = await self._modules.get(request.module_digest)
            args = [value_from_wire(v, i) for i, v in enumerate(request.args)]
            call = functools.partial(
                self._sandbox.invoke,
                module,
                request.export_name,
                args,
                stdin=request.stdin,
                **self._limits(request.limits),
            )
            outcome = await asyncio.get_running_loop().run_in_executor(self._workers, call)
        return pb.InvokeResponse(outcome=outcome_to_wire(outcome))

    def _limits(self, limits: invocation_pb2.InvocationLimits) -> dict[str, Any]:
        """The request's limits, defaulted and clamped to this executor's ceilings."""
        settings = self._settings
        timeout = settings.default_timeout_seconds
        if limits.HasField("timeout"):
            requested = limits.timeout.ToTimedelta().total_seconds()
            if requested > 0:
                timeout = min(requested, settings.max_timeout_seconds)
        for field in ("max_output_bytes", "max_memory_bytes"):
            if getattr(limits, field) < 0:
                raise InvalidArgumentError(
                    f"limits.{field} must not be negative", metadata={"field": f"limits.{field}"}
                )
        max_output = limits.max_output_bytes or settings.max_output_bytes
        return {
            "timeout_seconds": timeout,
            "max_output_bytes": min(max_output, settings.max_output_bytes),
            "fuel": limits.fuel or None,
            "max_memory_bytes": limits.max_memory_bytes or None,
        }
