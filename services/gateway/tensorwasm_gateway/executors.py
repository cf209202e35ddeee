"""Calls to executor replicas: rendezvous routing, failover only where no call has started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import open_channel
from tensorwasm_common.deadlines import downstream_timeout
from tensorwasm_common.errors import ServiceError, UnavailableError
from tensorwasm_common.status import downstream_error

from tensorwasm_gateway.routing import rendezvous_order

_DOWN = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class ExecutorPool:
    """One channel per executor replica; each module digest prefers the same replica."""

    def __init__(self, addresses: tuple[str, ...], *, max_message_bytes: int, timeout: float):
        self._channels = {
            a: open_channel(a, max_message_bytes=max_message_bytes) for a in addresses
        }
        self._stubs = {a: pb_grpc.ExecutorServiceStub(c) for a, c in self._channels.items()}
        self._timeout = timeout

    async def prepare(
        self, digest: str, *, init_export: str = "", tenant: str = ""
    ) -> pb.PrepareModuleResponse:
        """Compiles on the preferred replica; PrepareModule is idempotent, so any
        UNAVAILABLE replica is skipped for the next one."""
        last: ServiceError | None = None
        for address in rendezvous_order(digest, list(self._stubs)):
            try:
                response: pb.PrepareModuleResponse = await self._stubs[address].PrepareModule(
                    pb.PrepareModuleRequest(
                        module_digest=digest, init_export=init_export, tenant=tenant
                    ),
                    timeout=downstream_timeout(self._timeout),
                )
                return response
            except grpc.aio.AioRpcError as exc:
                last = downstream_error(exc, f"executor {address}")
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise last from exc
        raise last or UnavailableError("no executor replica is configured")

    def _replica(self, digest: str) -> str:
        """The first replica (in rendezvous order) whose channel is not known to be down."""
        order = rendezvous_order(digest, list(self._stubs))
        usable = [a for a in order if self._channels[a].get_state(try_to_connect=True) not in _DOWN]
        return (usable or order)[0]

    async def invoke(self, request: pb.InvokeRequest) -> pb.InvokeResponse:
        """Runs the call on the first replica (in rendezvous order) whose channel is not
        known to be down. A call that reached a replica is never sent to another one."""
        response: pb.InvokeResponse = await self._unary(
            self._replica(request.module_digest), "Invoke", request
        )
        return response

    def invoke_stream(self, request: pb.InvokeRequest) -> ExecutorStream:
        """Starts the call on one replica, chosen as for `invoke` and never resent, and
        returns its event stream."""
        address = self._replica(request.module_digest)
        call = self._stubs[address].InvokeStream(
            pb.InvokeStreamRequest(invocation=request), timeout=downstream_timeout(self._timeout)
        )
        return ExecutorStream(call, address)

    async def create_instance(
        self, request: pb.CreateInstanceRequest
    ) -> tuple[str, pb.CreateInstanceResponse]:
        """Creates the instance on the replica chosen as for `invoke` (never resent);
        returns that replica's address, where every later call of the instance goes."""
        address = self._replica(request.module_digest)
        response: pb.CreateInstanceResponse = await self._unary(address, "CreateInstance", request)
        return address, response

    async def call_instance(
        self, address: str, request: pb.CallInstanceRequest
    ) -> pb.CallInstanceResponse:
        """Calls an instance on the replica that holds it."""
        response: pb.CallInstanceResponse = await self._unary(address, "CallInstance", request)
        return response

    async def delete_instance(self, address: str, request: pb.DeleteInstanceRequest) -> None:
        """Terminates an instance on the replica that holds it."""
        await self._unary(address, "DeleteInstance", request)

    async def _unary(self, address: str, method: str, request: Any) -> Any:
        stub = self._stubs.get(address)
        if stub is None:  # the replica left the configuration, with its instances
            raise UnavailableError(
                f"executor {address} is no longer configured", metadata={"executor": address}
            )
        try:
            return await getattr(stub, method)(request, timeout=downstream_timeout(self._timeout))
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, f"executor {address}") from exc

    async def close(self) -> None:
        """Closes every channel."""
        for channel in self._channels.values():
            await channel.close()


class ExecutorStream:
    """The events of one executor InvokeStream call; `cancel()` stops the call (and with
    it the guest). Iterate it once; leaving the iteration early cancels the call too."""

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self.address = address

    def cancel(self) -> None:
        """Cancels the executor call; a no-op once it has ended."""
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[pb.InvokeStreamResponse]:
        try:
            async for message in self._call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, f"executor {self.address}") from exc
        finally:
            self._call.cancel()
