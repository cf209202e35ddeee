"""The asyncio client of the gateway: the blocking client's API, awaited.

    async with AsyncGatewayClient("localhost:50051", tenant="acme") as client:
        function = await client.create_function("add", wasm)
        response = await client.invoke("add", "add", [i32(1), i32(2)])
        async for event in client.invoke_stream("hello"):
            ...

Errors are the `tensorwasm_client.errors` classes; refused calls are retried as the
`RetryPolicy` says, waiting with `asyncio.sleep` (the event loop keeps running).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

from tensorwasm_client.errors import from_rpc_error
from tensorwasm_client.messages import (
    DEFAULT_GATEWAY,
    FINISHED_STATES,
    Connection,
    create_instance_request,
    function_name,
    idempotent,
    instance_name,
    invocation_limits,
    invocation_name,
    invoke_request,
    rpc_timeout,
)
from tensorwasm_client.retries import RetryPolicy
from tensorwasm_client.uploads import DEFAULT_CHUNK_BYTES, Progress, upload_messages

ResponseT = TypeVar("ResponseT")


class AsyncGatewayClient:
    """Calls the gateway's public API as one tenant, from asyncio code.

    Create it inside a running event loop; use `async with` (or `await close()`).
    """

    def __init__(
        self,
        address: str = DEFAULT_GATEWAY,
        *,
        tenant: str | None = None,
        token: str | None = None,
        tls: bool = False,
        ca_file: Path | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Opens a channel to `address`; the arguments are `GatewayClient`'s."""
        self.connection = Connection(address, tenant, token, tls, ca_file)
        credentials = self.connection.credentials()
        options = self.connection.channel_options()
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._stub = pb_grpc.GatewayServiceStub(self._channel)
        self._metadata = self.connection.metadata()
        self.retry = retry or RetryPolicy()

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel (calls in flight are cancelled)."""
        await self._channel.close()

    async def _call(
        self,
        method: str,
        request: object,
        response_type: type[ResponseT],
        deadline_seconds: float = 60.0,
    ) -> ResponseT:
        """One unary call, retried as the policy says; errors typed."""
        rpc: Callable[..., Any] = getattr(self._stub, method)
        async for attempt in self.retry.asynchronous(idempotent=idempotent(method, request)):
            with attempt:
                try:
                    response = await rpc(request, metadata=self._metadata, timeout=deadline_seconds)
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from None
        assert isinstance(response, response_type)
        return response

    async def create_function(
        self, function_id: str, wasm: bytes, config: pb.FunctionConfig | None = None
    ) -> pb.Function:
        """Deploys a module under `functions/{function_id}`."""
        request = pb.CreateFunctionRequest(function_id=function_id, wasm=wasm, config=config)
        response = await self._call("CreateFunction", request, pb.CreateFunctionResponse, 300.0)
        return response.function

    async def upload_function(
        self,
        function_id: str,
        module: bytes | Path,
        config: pb.FunctionConfig | None = None,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: Progress | None = None,
    ) -> pb.Function:
        """Deploys a module streamed in chunks (see `GatewayClient.upload_function`)."""
        async for attempt in self.retry.asynchronous():
            with attempt:
                messages = upload_messages(
                    function_id, module, config, chunk_bytes=chunk_bytes, progress=progress
                )
                try:
                    response = await self._stub.UploadFunction(
                        messages, metadata=self._metadata, timeout=300.0
                    )
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from None
        assert isinstance(response, pb.UploadFunctionResponse)
        return response.function

    async def get_function(self, function_id: str) -> pb.Function:
        """One function."""
        request = pb.GetFunctionRequest(name=function_name(function_id))
        return (await self._call("GetFunction", request, pb.GetFunctionResponse)).function

    async def list_functions(self, page_size: int = 100) -> AsyncIterator[pb.Function]:
        """Every function of the tenant, fetching page after page."""
        token = ""
        while True:
            request = pb.ListFunctionsRequest(page_size=page_size, page_token=token)
            response = await self._call("ListFunctions", request, pb.ListFunctionsResponse)
            for function in response.functions:
                yield function
            token = response.next_page_token
            if not token:
                return

    async def delete_function(self, function_id: str) -> None:
        """Deletes a function."""
        request = pb.DeleteFunctionRequest(name=function_name(function_id))
        await self._call("DeleteFunction", request, pb.DeleteFunctionResponse)

    async def invoke(
        self,
        function_id: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        stdin: bytes = b"",
        guest_input: bytes = b"",
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        max_memory_bytes: int = 0,
    ) -> pb.InvokeResponse:
        """Calls an export; a trap is in `response.outcome.failure`."""
        request = invoke_request(
            function_id,
            export,
            args,
            stdin=stdin,
            guest_input=guest_input,
            timeout_seconds=timeout_seconds,
            fuel=fuel,
            max_memory_bytes=max_memory_bytes,
        )
        return await self._call("Invoke", request, pb.InvokeResponse, rpc_timeout(timeout_seconds))

    async def invoke_stream(
        self,
        function_id: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        stdin: bytes = b"",
        guest_input: bytes = b"",
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        max_memory_bytes: int = 0,
    ) -> AsyncIterator[pb.InvokeStreamResponse]:
        """The events of a streaming invoke: output chunks, then the outcome. Leaving the
        loop early (or cancelling the task) cancels the call, and the guest stops."""
        request = invoke_request(
            function_id,
            export,
            args,
            stdin=stdin,
            guest_input=guest_input,
            timeout_seconds=timeout_seconds,
            fuel=fuel,
            max_memory_bytes=max_memory_bytes,
        )
        stream = pb.InvokeStreamRequest(invocation=request)

        def start() -> Any:
            return self._stub.InvokeStream(
                stream, metadata=self._metadata, timeout=rpc_timeout(timeout_seconds)
            )

        # A refusal comes before the first event (the call did not start): retried like a
        # unary call. Once an event has arrived, errors are raised as they come.
        call: Any = None
        first: object = None
        async for attempt in self.retry.asynchronous():
            with attempt:
                call = start()
                try:
                    first = await call.read()
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from None
        try:
            while first is not grpc.aio.EOF:
                assert isinstance(first, pb.InvokeStreamResponse)
                yield first
                first = await call.read()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def start_invocation(
        self,
        function_id: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        request_id: str = "",
        stdin: bytes = b"",
        guest_input: bytes = b"",
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        max_memory_bytes: int = 0,
    ) -> pb.Invocation:
        """Starts an async invocation; returns it (PENDING) at once."""
        request = invoke_request(
            function_id,
            export,
            args,
            stdin=stdin,
            guest_input=guest_input,
            timeout_seconds=timeout_seconds,
            fuel=fuel,
            max_memory_bytes=max_memory_bytes,
        )
        start = pb.StartInvocationRequest(invocation=request, request_id=request_id)
        response = await self._call("StartInvocation", start, pb.StartInvocationResponse)
        return response.invocation

    async def get_invocation(self, invocation: str) -> pb.Invocation:
        """One async invocation, with its outcome once finished."""
        request = pb.GetInvocationRequest(name=invocation_name(invocation))
        return (await self._call("GetInvocation", request, pb.GetInvocationResponse)).invocation

    async def list_invocations(self, page_size: int = 100) -> AsyncIterator[pb.Invocation]:
        """Every retained invocation of the tenant, oldest first."""
        token = ""
        while True:
            request = pb.ListInvocationsRequest(page_size=page_size, page_token=token)
            response = await self._call("ListInvocations", request, pb.ListInvocationsResponse)
            for invocation in response.invocations:
                yield invocation
            token = response.next_page_token
            if not token:
                return

    async def wait_invocation(
        self, invocation: str, timeout_seconds: float = 60.0
    ) -> pb.Invocation:
        """Polls an invocation until it has finished (TimeoutError past the timeout)."""
        deadline = time.monotonic() + timeout_seconds
        delay = 0.02
        while True:
            current = await self.get_invocation(invocation)
            if current.state in FINISHED_STATES:
                return current
            if time.monotonic() > deadline:
                state = pb.InvocationState.Name(current.state)
                raise TimeoutError(f"{current.name} is still {state}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def create_instance(
        self,
        function_id: str,
        *,
        stdin: bytes = b"",
        guest_input: bytes = b"",
        timeout_seconds: float = 0.0,
        max_memory_bytes: int = 0,
        idle_ttl_seconds: float = 0.0,
    ) -> pb.CreateInstanceResponse:
        """Starts a live instance; `response.instance` is unset when its start failed."""
        request = create_instance_request(
            function_id,
            stdin=stdin,
            guest_input=guest_input,
            timeout_seconds=timeout_seconds,
            max_memory_bytes=max_memory_bytes,
            idle_ttl_seconds=idle_ttl_seconds,
        )
        return await self._call(
            "CreateInstance", request, pb.CreateInstanceResponse, rpc_timeout(timeout_seconds)
        )

    async def call_instance(
        self,
        instance: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        guest_input: bytes = b"",
    ) -> pb.CallInstanceResponse:
        """Calls an export of a live instance."""
        request = pb.CallInstanceRequest(
            name=instance_name(instance),
            export_name=export,
            args=args,
            limits=invocation_limits(timeout_seconds, fuel, 0),
            input=guest_input,
        )
        return await self._call(
            "CallInstance", request, pb.CallInstanceResponse, rpc_timeout(timeout_seconds)
        )

    async def get_instance(self, instance: str) -> pb.Instance:
        """One live instance."""
        request = pb.GetInstanceRequest(name=instance_name(instance))
        return (await self._call("GetInstance", request, pb.GetInstanceResponse)).instance

    async def delete_instance(self, instance: str) -> None:
        """Terminates a live instance."""
        request = pb.DeleteInstanceRequest(name=instance_name(instance))
        await self._call("DeleteInstance", request, pb.DeleteInstanceResponse)
