"""A synchronous Python client of the gateway, with typed errors."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

DEFAULT_GATEWAY = "localhost:50051"
TENANT_METADATA_KEY = "x-tensorwasm-tenant"


@dataclass
class TensorWasmError(Exception):
    """A failed call: the status code name, the ErrorInfo reason and its metadata."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


def _error(exc: grpc.RpcError) -> TensorWasmError:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    message = exc.details() if hasattr(exc, "details") else str(exc)
    reason, metadata = code, {}
    for detail in _rich_status(exc).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
    return TensorWasmError(code, reason, message or "", metadata)


def _rich_status(exc: grpc.RpcError) -> status_pb2.Status:
    """The call's `google.rpc.Status` (empty when it carries none or a contradictory one)."""
    if not all(hasattr(exc, name) for name in ("code", "details", "trailing_metadata")):
        return status_pb2.Status()
    try:
        status: status_pb2.Status | None = rpc_status.from_call(exc)
    except ValueError:
        return status_pb2.Status()
    return status or status_pb2.Status()


class GatewayClient:
    """Calls the public API as one tenant."""

    def __init__(
        self,
        address: str = DEFAULT_GATEWAY,
        *,
        tenant: str | None = None,
        token: str | None = None,
    ) -> None:
        """`token` is sent as `authorization: Bearer <token>` (the gateway's auth)."""
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self._stub = pb_grpc.GatewayServiceStub(self._channel)
        metadata: list[tuple[str, str]] = []
        if tenant:
            metadata.append((TENANT_METADATA_KEY, tenant))
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, method: str, request: object, timeout: float = 60.0) -> object:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def create_function(
        self, function_id: str, wasm: bytes, config: pb.FunctionConfig | None = None
    ) -> pb.Function:
        """Deploys a module under `functions/{function_id}`, with its WASI view and
        default limits in `config`."""
        request = pb.CreateFunctionRequest(function_id=function_id, wasm=wasm, config=config)
        response = self._call("CreateFunction", request, timeout=300.0)
        assert isinstance(response, pb.CreateFunctionResponse)
        return response.function

    def get_function(self, function_id: str) -> pb.Function:
        """One function."""
        response = self._call("GetFunction", pb.GetFunctionRequest(name=_name(function_id)))
        assert isinstance(response, pb.GetFunctionResponse)
        return response.function

    def list_functions(self, page_size: int = 100) -> Iterator[pb.Function]:
        """Every function of the tenant, fetching page after page."""
        token = ""
        while True:
            request = pb.ListFunctionsRequest(page_size=page_size, page_token=token)
            response = self._call("ListFunctions", request)
            assert isinstance(response, pb.ListFunctionsResponse)
            yield from response.functions
            token = response.next_page_token
            if not token:
                return

    def list_page(self, page_size: int, page_token: str = "") -> pb.ListFunctionsResponse:
        """One page of functions."""
        request = pb.ListFunctionsRequest(page_size=page_size, page_token=page_token)
        response = self._call("ListFunctions", request)
        assert isinstance(response, pb.ListFunctionsResponse)
        return response

    def delete_function(self, function_id: str) -> None:
        """Deletes a function."""
        self._call("DeleteFunction", pb.DeleteFunctionRequest(name=_name(function_id)))

    def invoke(
        self,
        function_id: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        stdin: bytes = b"",
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        max_memory_bytes: int = 0,
    ) -> pb.InvokeResponse:
        """Calls an export with typed arguments; a trap is in `response.outcome.failure`."""
        request = _invoke_request(
            function_id,
            export,
            args,
            stdin=stdin,
            timeout_seconds=timeout_seconds,
            fuel=fuel,
            max_memory_bytes=max_memory_bytes,
        )
        response = self._call("Invoke", request, timeout=_rpc_timeout(timeout_seconds))
        assert isinstance(response, pb.InvokeResponse)
        return response

    def start_invocation(
        self,
        function_id: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        request_id: str = "",
        stdin: bytes = b"",
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        max_memory_bytes: int = 0,
    ) -> pb.Invocation:
        """Starts an async invocation; returns it (PENDING) at once."""
        request = _invoke_request(
            function_id,
            export,
            args,
            stdin=stdin,
            timeout_seconds=timeout_seconds,
            fuel=fuel,
            max_memory_bytes=max_memory_bytes,
        )
        response = self._call(
            "StartInvocation",
            pb.StartInvocationRequest(invocation=request, request_id=request_id),
        )
        assert isinstance(response, pb.StartInvocationResponse)
        return response.invocation

    def get_invocation(self, invocation: str) -> pb.Invocation:
        """One async invocation, with its outcome once finished."""
        response = self._call(
            "GetInvocation", pb.GetInvocationRequest(name=_invocation_name(invocation))
        )
        assert isinstance(response, pb.GetInvocationResponse)
        return response.invocation

    def list_invocations(self, page_size: int = 100) -> Iterator[pb.Invocation]:
        """Every retained invocation of the tenant, oldest first, fetched a page at a time."""
        token = ""
        while True:
            response = self._call(
                "ListInvocations",
                pb.ListInvocationsRequest(page_size=page_size, page_token=token),
            )
            assert isinstance(response, pb.ListInvocationsResponse)
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
            if current.state in (pb.INVOCATION_STATE_SUCCEEDED, pb.INVOCATION_STATE_FAILED):
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
        timeout_seconds: float = 0.0,
        fuel: int = 0,
        max_memory_bytes: int = 0,
    ) -> InvocationStream:
        """Calls an export and streams its events as the guest runs.

        Iterate the result for `InvokeStreamResponse` events: `output` chunks (stdout or
        stderr, in the order the guest wrote them), then one `outcome`, the last event.
        Request errors raise TensorWasmError from the iteration, before any event.
        `cancel()` (or leaving a `with` block early) stops the guest.
        """
        request = _invoke_request(
            function_id,
            export,
            args,
            stdin=stdin,
            timeout_seconds=timeout_seconds,
            fuel=fuel,
            max_memory_bytes=max_memory_bytes,
        )
        call = self._stub.InvokeStream(
            pb.InvokeStreamRequest(invocation=request),
            metadata=self._metadata,
            timeout=_rpc_timeout(timeout_seconds),
        )
        return InvocationStream(call)

    def create_instance(
        self,
        function_id: str,
        *,
        stdin: bytes = b"",
        timeout_seconds: float = 0.0,
        max_memory_bytes: int = 0,
        idle_ttl_seconds: float = 0.0,
    ) -> pb.CreateInstanceResponse:
        """Starts a live instance; `response.instance` is unset when its start failed."""
        request = pb.CreateInstanceRequest(
            function=_name(function_id),
            stdin=stdin,
            limits=invocation_limits(timeout_seconds, 0, max_memory_bytes),
        )
        if idle_ttl_seconds > 0:
            request.idle_ttl.FromNanoseconds(round(idle_ttl_seconds * 1e9))
        response = self._call("CreateInstance", request, timeout=_rpc_timeout(timeout_seconds))
        assert isinstance(response, pb.CreateInstanceResponse)
        return response

    def call_instance(
        self,
        instance: str,
        export: str = "",
        args: Sequence[values_pb2.Value] = (),
        *,
        timeout_seconds: float = 0.0,
        fuel: int = 0,
    ) -> pb.CallInstanceResponse:
        """Calls an export of a live instance (`instances/{id}` or the bare id)."""
        request = pb.CallInstanceRequest(
            name=_instance_name(instance),
            export_name=export,
            args=args,
            limits=invocation_limits(timeout_seconds, fuel, 0),
        )
        response = self._call("CallInstance", request, timeout=_rpc_timeout(timeout_seconds))
        assert isinstance(response, pb.CallInstanceResponse)
        return response

    def get_instance(self, instance: str) -> pb.Instance:
        """One live instance."""
        request = pb.GetInstanceRequest(name=_instance_name(instance))
        response = self._call("GetInstance", request)
        assert isinstance(response, pb.GetInstanceResponse)
        return response.instance

    def list_instances(self) -> list[pb.Instance]:
        """Every live instance of the tenant (all pages), by id."""
        instances: list[pb.Instance] = []
        token = ""
        while True:
            response = self._call(
                "ListInstances", pb.ListInstancesRequest(page_size=1000, page_token=token)
            )
            assert isinstance(response, pb.ListInstancesResponse)
            instances.extend(response.instances)
            token = response.next_page_token
            if not token:
                return instances

    def delete_instance(self, instance: str) -> None:
        """Terminates a live instance."""
        self._call("DeleteInstance", pb.DeleteInstanceRequest(name=_instance_name(instance)))


class InvocationStream:
    """The events of a streaming invoke; iterate it once."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._outcome_seen = False

    def __iter__(self) -> Iterator[pb.InvokeStreamResponse]:
        return self

    def __next__(self) -> pb.InvokeStreamResponse:
        try:
            event = next(self._call)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        assert isinstance(event, pb.InvokeStreamResponse)
        if event.HasField("outcome"):
            self._outcome_seen = True
        return event

    def cancel(self) -> None:
        """Cancels the call: the guest stops; a no-op once the call has ended."""
        self._call.cancel()

    def finish(self) -> None:
        """Reads the call to its end (its status) after the outcome, the last event: a
        call cancelled as soon as its outcome arrived would end CANCELLED at the gateway,
        a successful call counted as a failure."""
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


def _invoke_request(
    function_id: str,
    export: str,
    args: Sequence[values_pb2.Value],
    *,
    stdin: bytes,
    timeout_seconds: float,
    fuel: int,
    max_memory_bytes: int,
) -> pb.InvokeRequest:
    limits = invocation_limits(timeout_seconds, fuel, max_memory_bytes)
    return pb.InvokeRequest(
        name=_name(function_id), export_name=export, args=args, stdin=stdin, limits=limits
    )


def invocation_limits(
    timeout_seconds: float, fuel: int, max_memory_bytes: int
) -> invocation_pb2.InvocationLimits:
    """Wire limits; zero fields mean "the default"."""
    limits = invocation_pb2.InvocationLimits(fuel=fuel, max_memory_bytes=max_memory_bytes)
    if timeout_seconds > 0:
        seconds, nanos = int(timeout_seconds), int(timeout_seconds % 1 * 1e9)
        limits.timeout.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    return limits


def _rpc_timeout(timeout_seconds: float) -> float:
    """The RPC deadline for a guest deadline: room for the guest and the hops."""
    return max(timeout_seconds, 10.0) + 30.0


def _name(function_id: str) -> str:
    return function_id if function_id.startswith("functions/") else f"functions/{function_id}"


def _invocation_name(invocation: str) -> str:
    return invocation if invocation.startswith("invocations/") else f"invocations/{invocation}"


def _instance_name(instance: str) -> str:
    return instance if instance.startswith("instances/") else f"instances/{instance}"
