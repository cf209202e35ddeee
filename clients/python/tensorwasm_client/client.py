"""The blocking Python client of the gateway: every RPC, typed errors, RetryInfo retries.

Errors are `tensorwasm_client.errors` classes (`NotFoundError`, `RateLimitedError`, ...);
a call the gateway refused before it started is retried as `RetryPolicy` says (see
`tensorwasm_client.retries`). `tensorwasm_client.aio.AsyncGatewayClient` is the asyncio
twin of this client.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

from tensorwasm_client.errors import TensorWasmError, from_rpc_error
from tensorwasm_client.messages import (
    DEFAULT_GATEWAY,
    FINISHED_STATES,
    TENANT_METADATA_KEY,
    Connection,
    TlsOptions,
    create_instance_request,
    function_name,
    idempotent,
    instance_name,
    invocation_limits,
    invocation_name,
    invoke_request,
    rpc_timeout,
    snapshot_name,
)
from tensorwasm_client.retries import RetryPolicy
from tensorwasm_client.uploads import DEFAULT_CHUNK_BYTES, Progress, upload_messages

__all__ = [
    "DEFAULT_GATEWAY",
    "TENANT_METADATA_KEY",
    "GatewayClient",
    "InvocationStream",
    "TensorWasmError",
    "TlsOptions",
    "invocation_limits",
]

ResponseT = TypeVar("ResponseT")


class GatewayClient:
    """Calls the gateway's public API as one tenant, over one channel.

    Use it as a context manager (or call `close()`). Every method raises a
    `TensorWasmError` subclass when the call fails.
    """

    def __init__(
        self,
        address: str = DEFAULT_GATEWAY,
        *,
        tenant: str | None = None,
        token: str | None = None,
        tls: TlsOptions | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Opens a channel to `address`.

        Args:
            address: the gateway's gRPC `host:port`.
            tenant: the tenant to act for (`x-tensorwasm-tenant`); None: the gateway's
                choice (the token's only tenant, else `default`).
            token: the bearer token (`authorization: Bearer <token>`).
            tls: TLS to the gateway (mTLS with a client certificate); None: plaintext.
            retry: when refused calls are retried (default: `RetryPolicy()`).
        """
        self.connection = Connection(address, tenant, token, tls)
        credentials = self.connection.credentials()
        options = self.connection.channel_options()
        self._channel = (
            grpc.secure_channel(address, credentials, options=options)
            if credentials
            else grpc.insecure_channel(address, options=options)
        )
        self._stub = pb_grpc.GatewayServiceStub(self._channel)
        self._metadata = self.connection.metadata()
        self.retry = retry or RetryPolicy()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(
        self,
        method: str,
        request: object,
        response_type: type[ResponseT],
        timeout: float = 60.0,
    ) -> ResponseT:
        """One unary call, retried as the policy says; errors typed."""
        rpc: Callable[..., Any] = getattr(self._stub, method)
        for attempt in self.retry.blocking(idempotent=idempotent(method, request)):
            with attempt:
                try:
                    response = rpc(request, metadata=self._metadata, timeout=timeout)
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from None
        assert isinstance(response, response_type)
        return response

    def create_function(
        self, function_id: str, wasm: bytes, config: pb.FunctionConfig | None = None
    ) -> pb.Function:
        """Deploys a module under `functions/{function_id}`, with its WASI view and
        default limits in `config`."""
        request = pb.CreateFunctionRequest(function_id=function_id, wasm=wasm, config=config)
        return self._call("CreateFunction", request, pb.CreateFunctionResponse, 300.0).function

    def upload_function(
        self,
        function_id: str,
        module: bytes | Path,
        config: pb.FunctionConfig | None = None,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        progress: Progress | None = None,
    ) -> pb.Function:
        """Deploys a module streamed in chunks (UploadFunction): for modules of any size
        up to the gateway's module cap. `module` is bytes or a file, read once;
        `progress(sent_bytes, total_bytes)` is called after each chunk."""
        for attempt in self.retry.blocking():
            with attempt:
                messages = upload_messages(
                    function_id, module, config, chunk_bytes=chunk_bytes, progress=progress
                )
                try:
                    response = self._stub.UploadFunction(
                        messages, metadata=self._metadata, timeout=300.0
                    )
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from None
        assert isinstance(response, pb.UploadFunctionResponse)
        return response.function

    def get_function(self, function_id: str) -> pb.Function:
        """One function (`functions/{id}` or the bare id)."""
        request = pb.GetFunctionRequest(name=function_name(function_id))
        return self._call("GetFunction", request, pb.GetFunctionResponse).function

    def list_functions(self, page_size: int = 100) -> Iterator[pb.Function]:
        """Every function of the tenant, fetching page after page."""
        token = ""
        while True:
            response = self.list_page(page_size, token)
            yield from response.functions
            token = response.next_page_token
            if not token:
                return

    def list_page(self, page_size: int, page_token: str = "") -> pb.ListFunctionsResponse:
        """One page of functions."""
        request = pb.ListFunctionsRequest(page_size=page_size, page_token=page_token)
        return self._call("ListFunctions", request, pb.ListFunctionsResponse)

    def delete_function(self, function_id: str) -> None:
        """Deletes a function."""
        request = pb.DeleteFunctionRequest(name=function_name(function_id))
        self._call("DeleteFunction", request, pb.DeleteFunctionResponse)

    def invoke(
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
        """Calls an export with typed arguments; a trap is in `response.outcome.failure`."""
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
        return self._call("Invoke", request, pb.InvokeResponse, rpc_timeout(timeout_seconds))

    def start_invocation(
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
        """Starts an async invocation; returns it (PENDING) at once. A `request_id` makes
        the start idempotent: the same id returns the same invocation."""
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
        return self._call("StartInvocation", start, pb.StartInvocationResponse).invocation

    def get_invocation(self, invocation: str) -> pb.Invocation:
        """One async invocation, with its outcome once finished."""
        request = pb.GetInvocationRequest(name=invocation_name(invocation))
        return self._call("GetInvocation", request, pb.GetInvocationResponse).invocation

    def list_invocations(self, page_size: int = 100) -> Iterator[pb.Invocation]:
        """Every retained invocation of the tenant, oldest first, fetched a page at a time."""
        token = ""
        while True:
            request = pb.ListInvocationsRequest(page_size=page_size, page_token=token)
            response = self._call("ListInvocations", request, pb.ListInvocationsResponse)
            yield from response.invocations
            token = response.next_page_token
            if not token:
                return

    def wait_invocation(self, invocation: str, timeout_seconds: float = 60.0) -> pb.Invocation:
        """Polls an invocation until it has finished (TimeoutError past the timeout)."""
        deadline = time.monotonic() + timeout_seconds
        delay = 0.02
        while True:
            current = self.get_invocation(invocation)
            if current.state in FINISHED_STATES:
                return current
            if time.monotonic() > deadline:
                state = pb.InvocationState.Name(current.state)
                raise TimeoutError(f"{current.name} is still {state}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def invoke_stream(
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
    ) -> InvocationStream:
        """Calls an export and streams its events as the guest runs.

        Iterate the result for `InvokeStreamResponse` events: `output` chunks (stdout or
        stderr) and `chunk` events (what the guest emitted with `wasi:tensor`), in the
        order the guest produced them, then one `outcome`, the last event.
        Request errors raise TensorWasmError from the iteration, before any event (a
        streaming call is not retried). `cancel()` (or leaving a `with` block early)
        stops the guest.
        """
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

        return InvocationStream(start, self.retry)

    def create_instance(
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
        return self._call(
            "CreateInstance", request, pb.CreateInstanceResponse, rpc_timeout(timeout_seconds)
        )

    def call_instance(
        self,
        instance: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        guest_input: bytes = b"",
    ) -> pb.CallInstanceResponse:
        """Calls an export of a live instance (`instances/{id}` or the bare id)."""
        request = pb.CallInstanceRequest(
            name=instance_name(instance),
            export_name=export,
            args=args,
            limits=invocation_limits(timeout_seconds, fuel, 0),
            input=guest_input,
        )
        return self._call(
            "CallInstance", request, pb.CallInstanceResponse, rpc_timeout(timeout_seconds)
        )

    def get_instance(self, instance: str) -> pb.Instance:
        """One live instance."""
        request = pb.GetInstanceRequest(name=instance_name(instance))
        return self._call("GetInstance", request, pb.GetInstanceResponse).instance

    def list_instances(self) -> list[pb.Instance]:
        """Every live instance of the tenant (all pages), by id."""
        instances: list[pb.Instance] = []
        token = ""
        while True:
            response = self._call(
                "ListInstances",
                pb.ListInstancesRequest(page_size=1000, page_token=token),
                pb.ListInstancesResponse,
            )
            instances.extend(response.instances)
            token = response.next_page_token
            if not token:
                return instances

    def delete_instance(self, instance: str) -> None:
        """Terminates a live instance."""
        request = pb.DeleteInstanceRequest(name=instance_name(instance))
        self._call("DeleteInstance", request, pb.DeleteInstanceResponse)

    def publish_kernel(self, manifest: pb.KernelManifest, ptx_text: str) -> pb.KernelManifest:
        """Publishes a signed kernel (see `tensorwasm_client.kernels.signed_manifest`);
        -> the manifest as the registry stored it."""
        request = pb.PublishKernelRequest(manifest=manifest, ptx_text=ptx_text)
        return self._call("PublishKernel", request, pb.PublishKernelResponse).manifest

    def get_kernel(self, name: str, version: str) -> pb.GetKernelResponse:
        """A kernel's manifest and PTX text (the tenant's own, else the shared one)."""
        request = pb.GetKernelRequest(name=name, version=version)
        return self._call("GetKernel", request, pb.GetKernelResponse)

    def list_kernels(self, page_size: int = 100) -> Iterator[pb.KernelManifest]:
        """Every manifest the tenant sees, fetching page after page."""
        token = ""
        while True:
            request = pb.ListKernelsRequest(page_size=page_size, page_token=token)
            response = self._call("ListKernels", request, pb.ListKernelsResponse)
            yield from response.manifests
            token = response.next_page_token
            if not token:
                return

    def snapshot_instance(
        self, instance: str, *, max_restore_bytes: int = 0
    ) -> pb.InstanceSnapshot:
        """Captures a live instance between calls into a snapshot in the store."""
        request = pb.SnapshotInstanceRequest(
            name=instance_name(instance), max_restore_bytes=max_restore_bytes
        )
        return self._call("SnapshotInstance", request, pb.SnapshotInstanceResponse).snapshot

    def restore_instance(
        self,
        snapshot: str,
        *,
        function_id: str = "",
        idle_ttl_seconds: float = 0.0,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
    ) -> pb.RestoreInstanceResponse:
        """Brings a snapshot (`snapshots/{id}` or the bare id) back as a new live instance."""
        request = pb.RestoreInstanceRequest(
            snapshot=snapshot_name(snapshot),
            function=function_name(function_id) if function_id else "",
            max_restore_bytes=max_restore_bytes,
            require_signature=require_signature,
        )
        if idle_ttl_seconds:
            request.idle_ttl.FromNanoseconds(round(idle_ttl_seconds * 1e9))
        return self._call("RestoreInstance", request, pb.RestoreInstanceResponse)

    def export_snapshot(self, snapshot: str) -> tuple[pb.InstanceSnapshot, Iterator[bytes]]:
        """A snapshot and its record file in chunks (read them before the next call)."""
        request = pb.ExportSnapshotRequest(name=snapshot_name(snapshot))
        try:
            stream = self._stub.ExportSnapshot(request, metadata=self._metadata, timeout=300.0)
            first = next(stream)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

        def chunks() -> Iterator[bytes]:
            yield first.chunk
            try:
                for message in stream:
                    yield message.chunk
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return first.snapshot, chunks()

    def import_snapshot(
        self,
        record: bytes,
        *,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> pb.InstanceSnapshot:
        """Stores a snapshot record file (as `export_snapshot` gave it) as a new snapshot."""
        header = pb.ImportSnapshotHeader(
            size_bytes=len(record),
            max_restore_bytes=max_restore_bytes,
            require_signature=require_signature,
        )

        def messages() -> Iterator[pb.ImportSnapshotRequest]:
            yield pb.ImportSnapshotRequest(header=header)
            view = memoryview(record)
            for start in range(0, len(record), chunk_bytes):
                yield pb.ImportSnapshotRequest(chunk=bytes(view[start : start + chunk_bytes]))

        try:
            response = self._stub.ImportSnapshot(messages(), metadata=self._metadata, timeout=300.0)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        assert isinstance(response, pb.ImportSnapshotResponse)
        return response.snapshot


class InvocationStream:
    """The events of a streaming invoke; iterate it once.

    The call starts on the first `next()`. A refusal comes before the first event (the
    call did not start) and is retried as the client's policy says; once an event has
    arrived, errors are raised as they come.
    """

    def __init__(self, start: Callable[[], Any], retry: RetryPolicy) -> None:
        self._start = start
        self._retry = retry
        self._call: Any = None
        self._outcome_seen = False

    def __iter__(self) -> Iterator[pb.InvokeStreamResponse]:
        return self

    def __next__(self) -> pb.InvokeStreamResponse:
        if self._call is None:
            for attempt in self._retry.blocking():
                with attempt:
                    self._call = self._start()
                    event = self._next()
            return event
        return self._next()

    def _next(self) -> pb.InvokeStreamResponse:
        try:
            event = next(self._call)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        assert isinstance(event, pb.InvokeStreamResponse)
        if event.HasField("outcome"):
            self._outcome_seen = True
        return event

    def cancel(self) -> None:
        """Cancels the call: the guest stops; a no-op once the call has ended."""
        if self._call is not None:
            self._call.cancel()

    def finish(self) -> None:
        """Reads the call to its end (its status) after the outcome, the last event: a
        call cancelled as soon as its outcome arrived would end CANCELLED at the gateway,
        a successful call counted as a failure."""
        if self._call is None:
            return
        with contextlib.suppress(grpc.RpcError, StopIteration):
            for _ in self._call:
                pass

    def __enter__(self) -> InvocationStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Leaving the block after the outcome ends the call normally; leaving it
        earlier (or on an error) cancels it, which stops the guest."""
        if self._outcome_seen and exc_type is None:
            self.finish()
        self.cancel()
