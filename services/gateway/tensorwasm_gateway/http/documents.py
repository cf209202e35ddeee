"""The face's JSON documents: request bodies in, invocation results and jobs out."""

from __future__ import annotations

import json
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_json, to_wire
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.errors import Reason

from tensorwasm_gateway.http.errors import FaceError, failure_envelope, reason_of, status_and_kind

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
# An export's parameter types, by export name.
ParamTypes = dict[str, tuple[values_pb2.ValueType.ValueType, ...]]


def json_object(body: bytes, allowed: set[str] | None) -> dict[str, Any]:
    """The body as a JSON object, with only `allowed` keys (any when None)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FaceError(_INVALID, Reason.INVALID_JSON, "body is not JSON") from None
    if not isinstance(document, dict):
        raise FaceError(_INVALID, Reason.INVALID_JSON, "body must be an object")
    if allowed is not None and set(document) - allowed:
        unknown = sorted(set(document) - allowed)
        raise FaceError(_INVALID, Reason.INVALID_JSON, f"unknown fields {unknown}")
    return document


def invoke_body(body: bytes) -> tuple[str, list[Any], bytes]:
    """The export, JSON args and `wasi:tensor` input of an InvokeRequest body
    `{export?, args?, input?}` (may be empty; `input` is text, sent as UTF-8)."""
    document = json_object(body, None) if body.strip() else {}
    export, args = document.get("export") or "", document.get("args") or []
    guest_input = document.get("input") or ""
    if not isinstance(export, str) or not isinstance(args, list):
        raise FaceError(_INVALID, Reason.INVALID_JSON, "export must be a string and args an array")
    if not isinstance(guest_input, str):
        raise FaceError(_INVALID, Reason.INVALID_JSON, "input must be a string")
    return export, args, guest_input.encode()


def typed_args(params: ParamTypes, export: str, args: list[Any]) -> list[values_pb2.Value]:
    """The JSON `args` as wire values of the chosen export's parameters ([] when the
    export is unknown: the gateway then reports it missing)."""
    chosen = export or _default_export(list(params))
    if chosen not in params:
        return []
    try:
        values: list[values_pb2.Value] = to_wire(args, params[chosen])
    except ArgumentError as exc:
        raise FaceError(_INVALID, Reason.ARGUMENT_MISMATCH, str(exc)) from None
    return values


def _default_export(names: list[str]) -> str:
    """As the gateway chooses (`functions.service.choose_export`)."""
    for default in ("_start", "main"):
        if default in names:
            return default
    return names[0] if len(names) == 1 else ""


def function_json(function: pb.Function) -> dict[str, Any]:
    """The deploy answer for a created function."""
    return {
        "id": function.name.removeprefix("functions/"),
        "name": function.name,
        "tenant": function.tenant,
        "module_digest": function.module_digest,
        "exports": [e.name for e in function.exports],
        "display_name": function.config.display_name,
    }


def outcome_json(function_id: str, outcome: invocation_pb2.InvocationOutcome) -> dict[str, Any]:
    """The invoke result (`"ok"` for no results), plus the guest's output."""
    results = to_json(outcome.success.results)
    document: dict[str, Any] = {"function_id": function_id, "result": results or "ok"}
    if outcome.stdout or outcome.stderr:
        document["stdout"] = outcome.stdout.decode("utf-8", "replace")
        document["stderr"] = outcome.stderr.decode("utf-8", "replace")
    if outcome.chunks:
        document["chunks"] = outcome.chunks.decode("utf-8", "replace")
    return document


def job_json(invocation: pb.Invocation) -> dict[str, Any]:
    """The JobRecord of an invocation (`state` adds our precise state)."""
    function_id = invocation.function.removeprefix("functions/")
    state = pb.InvocationState.Name(invocation.state).removeprefix("INVOCATION_STATE_").lower()
    status = {"succeeded": "completed", "failed": "failed"}.get(state, "pending")
    document: dict[str, Any] = {
        "id": invocation.name.removeprefix("invocations/"),
        "function_id": function_id,
        "tenant_id": invocation.tenant,
        "status": status,
        "state": state,
        "created_unix_ms": invocation.create_time.ToMilliseconds(),
    }
    if status == "completed":
        document["result"] = outcome_json(function_id, invocation.outcome)
    elif status == "failed":
        if invocation.HasField("error"):
            error = invocation.error
            _, kind = status_and_kind(_status_code(error.code), reason_of(error.reason))
            document["result"] = {"kind": kind, "message": error.message}
            document["reason"] = error.reason
        else:
            failure = failure_envelope(function_id, invocation.outcome)["error"]
            document["result"] = {"kind": failure["kind"], "message": failure["message"]}
            document["reason"] = failure["reason"]
    return document


def _status_code(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)
