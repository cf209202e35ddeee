"""ExecutorService: proto <-> sandbox translation; guests run on the worker pool."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

import grpc
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.errors import InvalidArgumentError

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
    ) -> None:
        self._settings = settings
        self._sandbox = sandbox
        self._modules = modules
        self._workers = workers

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
        module, _ = await self._modules.get(request.module_digest)
        args = [value_from_wire(v, i) for i, v in enumerate(request.args)]
        timeout = self._settings.default_timeout_seconds
        if request.limits.HasField("timeout"):
            requested = request.limits.timeout.ToTimedelta().total_seconds()
            if requested > 0:
                timeout = min(requested, self._settings.max_timeout_seconds)
        if request.limits.max_output_bytes < 0:
            raise InvalidArgumentError(
                "limits.max_output_bytes must not be negative",
                metadata={"field": "limits.max_output_bytes"},
            )
        max_output = request.limits.max_output_bytes or self._settings.max_output_bytes
        call = functools.partial(
            self._sandbox.invoke,
            module,
            request.export_name,
            args,
            stdin=request.stdin,
            timeout_seconds=timeout,
            max_output_bytes=min(max_output, self._settings.max_output_bytes),
        )
        outcome = await asyncio.get_running_loop().run_in_executor(self._workers, call)
        return pb.InvokeResponse(outcome=outcome_to_wire(outcome))
