"""What to do next after a refusal: one hint per reason of the catalogue the CLI meets.

The error line names the status code and the reason (`error: NOT_FOUND
FUNCTION_NOT_FOUND: ...`); the hint below it says what a person can do about it.
"""

from __future__ import annotations

from tensorwasm.common.v1.error_reasons import Reason

from tensorwasm_client.errors import TensorWasmError, UnavailableError

_HINTS: dict[Reason, str] = {
    Reason.FUNCTION_NOT_FOUND: "`tensorwasm list` shows the tenant's functions (right --tenant?)",
    Reason.FUNCTION_ALREADY_EXISTS: "deploy under another --name, or `tensorwasm delete` it first",
    Reason.INVALID_WASM: "the file is not a WebAssembly module (.wasm binary or .wat text)",
    Reason.EXPORT_NOT_FOUND: "`tensorwasm get <function>` lists its exports",
    Reason.EXPORT_REQUIRED: "name the export with --export (`tensorwasm get` lists them)",
    Reason.ARGUMENT_MISMATCH: "--args must match the export's signature (`tensorwasm get`)",
    Reason.INVALID_NAME: "function ids are [a-z][a-z0-9-]{0,62}; tenants [a-z0-9][a-z0-9_-]{0,62}",
    Reason.TOO_LARGE: "the gateway's cap is in the error's metadata "
    "(TENSORWASM_GATEWAY_MAX_MODULE_BYTES, up to 256 MiB)",
    Reason.UNAUTHENTICATED: "give a token: --token, TENSORWASM_TOKEN, or token_file in the "
    "config profile",
    Reason.TENANT_SCOPE_DENIED: "the token is not scoped to this tenant: choose --tenant or "
    "another --profile",
    Reason.ADMIN_SCOPE_REQUIRED: "this needs a token with role=admin",
    Reason.RATE_LIMITED: "the tenant's request rate is used up; wait and retry",
    Reason.CONCURRENCY_EXHAUSTED: "the gateway is busy with calls of this kind; retry shortly",
    Reason.AUTH_THROTTLED: "too many failed logins from here; wait, then use a valid token",
    Reason.INVALID_METADATA: "send one authorization and one x-tensorwasm-tenant header",
    Reason.INVOCATION_NOT_FOUND: "`tensorwasm invocation list` shows the retained invocations",
    Reason.INSTANCE_NOT_FOUND: "the instance ended (deleted or idle past its TTL); create another",
    Reason.UPSTREAM_UNAVAILABLE: "a service behind the gateway is down: `tensorwasm status`",
    Reason.UPLOAD_DIGEST_MISMATCH: "the file changed while it was read, or the network corrupted "
    "it; deploy again",
    Reason.UPLOAD_INCOMPLETE: "the upload was cut short; deploy again",
}

_UNREACHABLE = "no gateway answered: is the stack up (`tensorwasm status`) and --gateway right?"


def hint_for(error: TensorWasmError) -> str:
    """The hint for `error`, or "" when there is nothing useful to add."""
    if isinstance(error, UnavailableError) and not error.request_id:
        return _UNREACHABLE
    if error.reason in Reason.__members__:
        return _HINTS.get(Reason(error.reason), "")
    return ""
