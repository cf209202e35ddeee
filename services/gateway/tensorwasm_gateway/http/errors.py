"""HTTP error bodies: gRPC statuses and guest failures as the HTTP API's error envelope."""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.errors import Reason
from tensorwasm_common.status import error_from_rpc

JSON_TYPE = "application/json"
# (reason or code name) -> (HTTP status, the envelope's error kind)
_BY_REASON: dict[Reason, tuple[int, str]] = {
    Reason.INVALID_NAME: (400, "invalid_name"),
    Reason.INVALID_WASM: (400, "invalid_wasm"),
    Reason.EXPORT_NOT_FOUND: (400, "missing_export"),
    Reason.EXPORT_REQUIRED: (400, "missing_export"),
    Reason.ARGUMENT_MISMATCH: (400, "invalid_args"),
    Reason.INVALID_VALUE: (400, "invalid_args"),
    Reason.UNSUPPORTED_VALUE_TYPE: (400, "invalid_args"),
    Reason.INVALID_JSON: (400, "invalid_json"),
    Reason.INVALID_BASE64: (400, "invalid_base64"),
    Reason.TOO_LARGE: (413, "body_too_large"),
    Reason.BODY_TOO_LARGE: (413, "body_too_large"),
    Reason.INSTANCE_NOT_FOUND: (404, "instance_not_found"),
    Reason.TENANT_CAPACITY_EXHAUSTED: (429, "tenant_capacity_exhausted"),
    Reason.EXECUTOR_SATURATED: (503, "executor_saturated"),
    Reason.ROUTE_NOT_FOUND: (404, "not_found"),
    Reason.KERNEL_REGISTRY_NOT_CONFIGURED: (503, "kernel_registry_not_configured"),
    Reason.KERNEL_REGISTRY_STORAGE_ERROR: (503, "kernel_registry_storage_error"),
    Reason.KERNEL_PUBLISH_SCOPE_REQUIRED: (403, "kernel_publish_scope_required"),
    Reason.KERNEL_BAD_SIGNATURE: (403, "bad_signature"),
    Reason.KERNEL_SIGNING_KEY_MISMATCH: (403, "signing_key_mismatch"),
    Reason.KERNEL_DIGEST_MISMATCH: (400, "digest_mismatch"),
    Reason.KERNEL_ALREADY_EXISTS: (409, "already_registered"),
    Reason.KERNEL_NOT_FOUND: (404, "not_found"),
    Reason.KERNEL_PTX_TOO_LARGE: (413, "ptx_too_large"),
    Reason.KERNEL_NAME_INVALID: (400, "invalid_request"),
    Reason.KERNEL_VERSION_INVALID: (400, "invalid_request"),
    Reason.KERNEL_MANIFEST_INVALID: (400, "invalid_request"),
}
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "bad_request"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "tenant_scope_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "bad_request"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "invoke_timeout"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented"),
    grpc.StatusCode.ABORTED: (409, "aborted"),
}


class FaceError(Exception):
    """An error of the HTTP face itself (before any gRPC call), with its gRPC equivalent."""

    def __init__(self, code: grpc.StatusCode, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class RequestRefusedError(Exception):
    """A request refused as HTTP (malformed, too large, unreadable), answered with the
    plain `{"error": {"kind", "message"}}` envelope; `close` ends the connection."""

    def __init__(self, status: int, kind: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.close = status, kind, message, close


def dump(document: object) -> bytes:
    """Compact JSON, ASCII only."""
    return json.dumps(document, separators=(",", ":")).encode()


def json_response(status: int, document: object, headers: dict[str, str] | None = None) -> Response:
    """A JSON document as a response (the body's bytes exactly as `dump` writes them)."""
    return Response(dump(document), status, {"content-type": JSON_TYPE, **(headers or {})})


def refusal_body(kind: str, message: str) -> bytes:
    """The envelope of an error without a gRPC equivalent."""
    return dump({"error": {"kind": kind, "message": message}})


def status_and_kind(code: grpc.StatusCode, reason: Reason) -> tuple[int, str]:
    """The HTTP status and the envelope's error kind of a gRPC status and reason."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, (500, "internal"))


def error_response(
    code: grpc.StatusCode, reason: Reason, message: str, retry_after_seconds: float | None = None
) -> Response:
    """The error envelope for a gRPC status, plus its code and reason."""
    status, kind = status_and_kind(code, reason)
    envelope = {"error": {"kind": kind, "message": message, "code": code.name, "reason": reason}}
    headers = {}
    if status == 429 or retry_after_seconds is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after_seconds or 1)))
    return json_response(status, envelope, headers)


def reason_of(name: str) -> Reason:
    """The catalogued reason a stored error names (INTERNAL for one outside the catalogue)."""
    return Reason.__members__.get(name, Reason.INTERNAL)


def error_reason(exc: grpc.aio.AioRpcError) -> Reason:
    """The catalogued reason of a failed gRPC call (its code's, without an ErrorInfo)."""
    return error_from_rpc(exc).reason


def rpc_error_response(exc: grpc.aio.AioRpcError) -> Response:
    """The envelope for a failed gRPC call, reading its ErrorInfo and RetryInfo."""
    error = error_from_rpc(exc)
    return error_response(
        exc.code(), error.reason, exc.details() or exc.code().name, error.retry_after_seconds
    )


def failure_envelope(function_id: str, outcome: invocation_pb2.InvocationOutcome) -> dict[str, Any]:
    """A guest failure's error body: the failure's reason and trap code included."""
    failure = outcome.failure
    kind = "invoke_timeout" if failure.reason == "DEADLINE_EXCEEDED" else "wasmtime"
    trap = invocation_pb2.TrapCode.Name(failure.trap_code) if failure.trap_code else ""
    return {
        "error": {"kind": kind, "message": failure.message, "reason": failure.reason},
        "function_id": function_id,
        "failure": {"reason": failure.reason, "message": failure.message, "trap_code": trap},
    }


def failure_response(function_id: str, outcome: invocation_pb2.InvocationOutcome) -> Response:
    """A guest failure as the HTTP API reports it: 504 invoke_timeout for a deadline,
    else 500 `wasmtime`."""
    status = 504 if outcome.failure.reason == "DEADLINE_EXCEEDED" else 500
    return json_response(status, failure_envelope(function_id, outcome))


async def on_face_error(request: Request, exc: Exception) -> Response:
    """Exception handler: a FaceError as its gRPC status's envelope."""
    assert isinstance(exc, FaceError)
    return error_response(exc.code, exc.reason, exc.message)


async def on_rpc_error(request: Request, exc: Exception) -> Response:
    """Exception handler: a failed gRPC call as its status's envelope."""
    assert isinstance(exc, grpc.aio.AioRpcError)
    return rpc_error_response(exc)


async def on_refused(request: Request, exc: Exception) -> Response:
    """Exception handler: a refused request, closing the connection when asked."""
    assert isinstance(exc, RequestRefusedError)
    close = {"connection": "close"} if exc.close else None
    return json_response(exc.status, {"error": {"kind": exc.kind, "message": exc.message}}, close)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Exception handler: routing's 404 and 405 in the error envelope."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        envelope = {"error": {"kind": "method_not_allowed", "message": "method not allowed"}}
        return json_response(405, envelope, {"allow": allow})
    if exc.status_code == 404:
        return error_response(grpc.StatusCode.NOT_FOUND, Reason.ROUTE_NOT_FOUND, "no such route")
    return json_response(exc.status_code, {"error": {"kind": "bad_request", "message": exc.detail}})


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Exception handler: a fault of the face itself (logged by the server) as 500."""
    return json_response(500, {"error": {"kind": "internal", "message": "internal error"}})
