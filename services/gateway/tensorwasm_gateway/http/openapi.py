"""The OpenAPI 3.1 document of the HTTP face, served at `/openapi.json`.

Written by hand beside the routes (app.py): a test validates it and checks it route by
route against the app, and the bodies the face answers against its schemas.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tensorwasm_gateway.http.errors import json_response

_JSON = "application/json"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    text = {
        400: "Bad request (kind: invalid_json, invalid_name, invalid_base64, invalid_wasm, "
        "missing_export, invalid_args, bad_request)",
        401: "Missing or unknown bearer token (unauthorized)",
        403: "The token's scope does not cover the tenant (tenant_scope_denied)",
        404: "No such function, job or route in this tenant (not_found)",
        409: "Already exists",
        413: "Body over the size cap (body_too_large)",
        429: "Rate or concurrency limit (rate_limited); see Retry-After",
        500: "The guest trapped (wasmtime), or an internal error",
        503: "No executor available (unavailable)",
        504: "The call's deadline passed (invoke_timeout)",
    }
    return {str(status): _json(_ref(schema), text[status]) for status in statuses}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_TENANT = {
    "name": "X-TensorWasm-Tenant",
    "in": "header",
    "required": False,
    "description": "The tenant (default `default`); the token's scope must cover it.",
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
}
_INVOKE_ERRORS = (400, 401, 403, 404, 413, 429, 500, 503, 504)


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _invoke_body() -> dict[str, Any]:
    return {"required": False, "content": {_JSON: {"schema": _ref("InvokeRequest")}}}


def _completion_route(summary: str, request: str) -> dict[str, Any]:
    return {
        "post": _operation(
            summary,
            {
                "200": {
                    "description": "The completion, or (stream: true) OpenAI server-sent "
                    "events ending with `data: [DONE]`",
                    "content": {
                        _JSON: {"schema": _ref("Completion")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 401, 403, 404, 429, 500, 503, 504, schema="OpenAiError"),
            },
            requestBody={"required": True, "content": {_JSON: {"schema": _ref(request)}}},
        )
    }


def _kernel_paths() -> dict[str, Any]:
    def query(name: str, text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": text,
                "schema": {"type": "integer", "minimum": 0}}  # fmt: skip

    def path(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    publish_body = {"required": True, "content": {_JSON: {"schema": _ref("PublishKernel")}}}
    return {
        "/kernels": {
            "post": _operation(
                "Publish a signed PTX kernel (docs/HTTP.md, Kernel registry)",
                {
                    "201": _json(_ref("KernelName"), "Published"),
                    **_errors(400, 401, 403, 409, 413, 429, 503),
                },
                parameters=[_TENANT],
                requestBody=publish_body,
            ),
            "get": _operation(
                "The kernel manifests the tenant sees (shared catalogue and its own)",
                {"200": _json(_ref("KernelList"), "A page of manifests"), **_errors(400, 401, 429)},
                parameters=[
                    query("offset", "Manifests to skip (default 0)"),
                    query("limit", "Page size (default 100, clamped to 1..1000)"),
                    _TENANT,
                ],
            ),
        },
        "/kernels/{name}/{version}": {
            "get": _operation(
                "A kernel's manifest and PTX text",
                {"200": _json(_ref("KernelWithPtx"), "The kernel"), **_errors(401, 404, 429, 503)},
                parameters=[path("name"), path("version"), _TENANT],
            )
        },
    }


def _paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": _operation(
                "Liveness of the gateway",
                {
                    "200": _json(_ref("Health"), "Serving"),
                    "503": _json(_ref("Health"), "Not serving"),
                },
                security=[],
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics (text format 0.0.4)",
                {
                    "200": {
                        "description": "The metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                security=[],
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, security=[]
            )
        },
        "/functions": {
            "post": _operation(
                "Deploy a module under a new opaque id",
                {"200": _json(_ref("Function"), "Deployed"), **_errors(400, 401, 403, 413, 429)},
                parameters=[_TENANT],
                requestBody={
                    "required": True,
                    "content": {_JSON: {"schema": _ref("CreateFunctionRequest")}},
                },
            )
        },
        "/functions/{id}": {
            "delete": _operation(
                "Delete a function",
                {"204": {"description": "Deleted"}, **_errors(401, 403, 404, 429)},
                parameters=[_ID, _TENANT],
            )
        },
        "/functions/{id}/invoke": {
            "post": _operation(
                "Call an export in a fresh instance",
                {"200": _json(_ref("InvokeResult"), "The results"), **_errors(*_INVOKE_ERRORS)},
                parameters=[_ID, _TENANT],
                requestBody=_invoke_body(),
            )
        },
        "/functions/{id}/invoke-async": {
            "post": _operation(
                "Start an asynchronous invocation",
                {
                    "202": _json(_ref("JobStarted"), "Started"),
                    **_errors(400, 401, 403, 404, 413, 429),
                },
                parameters=[
                    _ID,
                    _TENANT,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 128},
                    },
                ],
                requestBody=_invoke_body(),
            )
        },
        "/functions/{id}/invoke-stream": {
            "post": _operation(
                "Call an export and stream what it emits",
                {
                    "200": {
                        "description": "With `Accept: text/event-stream`: SSE (`event: chunk` "
                        "per wasi:tensor chunk, `event: output` per stdout/stderr write, then "
                        "`event: end` or `event: error`); else the raw bytes, chunked",
                        "content": {
                            "text/event-stream": {"schema": {"type": "string"}},
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                }
                            },
                        },
                    },
                    **_errors(400, 401, 403, 404, 413, 429, 503, 504),
                },
                parameters=[_ID, _TENANT],
                requestBody=_invoke_body(),
            )
        },
        "/jobs/{id}": {
            "get": _operation(
                "An asynchronous invocation's record",
                {"200": _json(_ref("JobRecord"), "The job"), **_errors(401, 403, 404, 429)},
                parameters=[_ID, _TENANT],
            )
        },
        **_kernel_paths(),
        "/v1/completions": _completion_route("OpenAI-compatible completion", "CompletionRequest"),
        "/v1/chat/completions": _completion_route(
            "OpenAI-compatible chat completion", "ChatCompletionRequest"
        ),
    }


_NUMBER_OR_OK = {
    "oneOf": [
        {"const": "ok", "description": "An export without results"},
        {"type": "array", "items": {"type": "number"}},
    ]
}
_BYTES32 = {
    "oneOf": [
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
        {"type": "string", "pattern": "^[0-9a-fA-F]*$"},
    ]
}
_KERNEL_MANIFEST = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string", "description": "SemVer 2.0.0"},
        "sm_version": {"type": "integer", "minimum": 0},
        "digest": _BYTES32,
        "signature": _BYTES32,
        "published_unix_ms": {"type": "integer"},
        "publisher": {"type": "string"},
        "key_id": {"type": "string"},
        "entry": {"type": "string"},
        "visibility": {"enum": ["shared", "private"]},
        "namespace": {"type": "string"},
        "ptx_size_bytes": {"type": "integer"},
    },
    "required": ["name", "version", "sm_version", "digest", "signature"],
    "additionalProperties": False,
}
_SCHEMAS: dict[str, Any] = {
    "KernelManifest": _KERNEL_MANIFEST,
    "PublishKernel": {
        "type": "object",
        "properties": {
            "manifest": {"$ref": "#/components/schemas/KernelManifest"},
            "ptx_text": {"type": "string"},
        },
        "required": ["manifest", "ptx_text"],
        "additionalProperties": False,
    },
    "KernelName": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        "required": ["name", "version"],
    },
    "KernelList": {
        "type": "object",
        "properties": {
            "manifests": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/KernelManifest"},
            },
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
        },
        "required": ["manifests", "offset", "limit"],
    },
    "KernelWithPtx": {
        "type": "object",
        "properties": {
            "manifest": {"$ref": "#/components/schemas/KernelManifest"},
            "ptx_text": {"type": "string"},
        },
        "required": ["manifest", "ptx_text"],
    },
    "Health": {
        "type": "object",
        "properties": {"status": {"enum": ["ok", "not_serving"]}},
        "required": ["status"],
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string"},
                    "message": {"type": "string"},
                    "code": {"type": "string", "description": "The gRPC status code"},
                    "reason": {"type": "string", "description": "The ErrorInfo reason"},
                },
                "required": ["kind", "message"],
            }
        },
        "required": ["error"],
    },
    "OpenAiError": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"},
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    },
    "CreateFunctionRequest": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "Display name, non-blank"},
            "wasm_b64": {"type": "string", "description": "The module, standard base64"},
        },
        "required": ["name", "wasm_b64"],
        "additionalProperties": False,
    },
    "Function": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "Opaque (a UUIDv4)"},
            "name": {"type": "string", "description": "The gRPC resource name"},
            "tenant": {"type": "string"},
            "module_digest": {"type": "string"},
            "exports": {"type": "array", "items": {"type": "string"}},
            "display_name": {"type": "string"},
        },
        "required": ["id", "name", "tenant", "module_digest", "exports"],
    },
    "InvokeRequest": {
        "type": "object",
        "properties": {
            "export": {"type": ["string", "null"], "description": "Default: _start, else main"},
            "args": {"type": ["array", "null"], "items": {"type": "number"}},
            "input": {"type": "string", "description": "Staged for wasi:tensor read_input"},
        },
    },
    "InvokeResult": {
        "type": "object",
        "properties": {
            "function_id": {"type": "string"},
            "result": _NUMBER_OR_OK,
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "chunks": {"type": "string", "description": "What the guest emitted (wasi:tensor)"},
        },
        "required": ["function_id", "result"],
    },
    "JobStarted": {
        "type": "object",
        "properties": {"job_id": {"type": "string"}},
        "required": ["job_id"],
    },
    "JobRecord": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "function_id": {"type": "string"},
            "tenant_id": {"type": "string"},
            "status": {"enum": ["pending", "completed", "failed"]},
            "state": {"type": "string"},
            "created_unix_ms": {"type": "integer"},
            "result": {"type": "object"},
            "reason": {"type": "string"},
        },
        "required": ["id", "function_id", "tenant_id", "status", "created_unix_ms"],
    },
    "CompletionRequest": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "prompt": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
            },
            "stream": {"type": "boolean"},
            "temperature": {"const": 1},
            "n": {"const": 1},
            "echo": {"const": False},
            "user": {"type": "string"},
        },
        "required": ["model"],
    },
    "ChatCompletionRequest": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string"},
                        "content": {"oneOf": [{"type": "string"}, {"type": "array"}]},
                        "name": {"type": "string"},
                    },
                },
            },
            "stream": {"type": "boolean"},
            "temperature": {"const": 1},
            "n": {"const": 1},
            "user": {"type": "string"},
        },
        "required": ["model", "messages"],
    },
    "Completion": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"enum": ["text_completion", "chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
            },
        },
        "required": ["id", "object", "created", "model", "choices", "usage"],
    },
}


async def serve_openapi(request: Request) -> Response:
    """`GET /openapi.json`."""
    return json_response(200, openapi_document())


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The face's OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "TensorWasm HTTP API",
            "version": importlib.metadata.version("tensorwasm-gateway"),
            "description": "The HTTP/JSON face of the gateway (docs/HTTP.md).",
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
    }
