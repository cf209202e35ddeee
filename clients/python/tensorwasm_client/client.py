"""A synchronous Python client of the gateway, with typed errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
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
    for key, value in exc.trailing_metadata() or () if hasattr(exc, "trailing_metadata") else ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
    return TensorWasmError(code, reason, message or "", metadata)


class GatewayClient:
    """Calls the public API as one tenant."""

    def __init__(self, address: str = DEFAULT_GATEWAY, *, tenant: str | None = None) -> None:
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self._stub = pb_grpc.GatewayServiceStub(self._channel)
        self._metadata = ((TENANT_METADATA_KEY, tenant),) if tenant else ()

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

    def create_function(self, function_id: str, wasm: bytes) -> pb.Function:
        """Deploys a module under `functions/{function_id}`."""
        request = pb.CreateFunctionRequest(function_id=function_id, wasm=wasm)
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


class InvocationStream:
    """The events of a streaming invoke; iterate it once."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[pb.InvokeStreamResponse]:
        return self

    def __next__(self) -> pb.InvokeStreamResponse:
        try:
            event = next(self._call)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        assert isinstance(event, pb.InvokeStreamResponse)
        return event

    def cancel(self) -> None:
        """Cancels the call: the guest stops; a no-op once the call has ended."""
        self._call.cancel()

    def __enter__(self) -> InvocationStream:
        return self

    def __exit__(self, *exc: object) -> None:
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
    limits = invocation_pb2.InvocationLimits(fuel=fuel, max_memory_bytes=max_memory_bytes)
    if timeout_seconds > 0:
        seconds, nanos = int(timeout_seconds), int(timeout_seconds % 1 * 1e9)
        limits.timeout.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    return pb.InvokeRequest(
        name=_name(function_id), export_name=export, args=args, stdin=stdin, limits=limits
    )


def _rpc_timeout(timeout_seconds: float) -> float:
    """The RPC deadline for a guest deadline: room for the guest and the hops."""
    return max(timeout_seconds, 10.0) + 30.0


def _name(function_id: str) -> str:
    return function_id if function_id.startswith("functions/") else f"functions/{function_id}"
