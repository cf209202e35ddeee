"""The request id of a gateway call: chosen once, returned to the caller, sent downstream.

The guard picks it when a call arrives: the caller's `x-request-id` when it is
`[A-Za-z0-9._:-]{1,128}`, else a fresh UUID (32 hex digits). It is

- returned to the caller as trailing metadata `x-request-id` (on errors too; the HTTP face
  returns it as an `x-request-id` response header),
- written in the call's audit record,
- sent to the executor replica as `x-request-id` metadata, where the executor's call log
  (`TENSORWASM_EXECUTOR_CALL_LOG`) writes one line per call received; an async
  invocation's executor call carries its StartInvocation's id.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterable

from tensorwasm_common.channels import REQUEST_ID_KEY

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# The request id of the call being handled (set by the guard; "" outside a guarded call).
CURRENT_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "tensorwasm_gateway_request_id", default=""
)


def valid_request_id(value: str) -> bool:
    """True when a caller-supplied id may be used as is."""
    return _REQUEST_ID.fullmatch(value) is not None


def request_id_from(metadata: Iterable[tuple[str, object]] | None) -> str:
    """The caller's valid `x-request-id` (the first one), else a new UUID."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and valid_request_id(value):
                return value
            break
    return new_request_id()


# The version (4) and variant (RFC 4122) bits of a random UUID, in its 128-bit integer.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A fresh random UUID (version 4) as 32 hex digits: what `uuid.uuid4().hex` gives,
    without building a UUID object on every call that brings no id of its own."""
    value = int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET
    return f"{value:032x}"


def downstream_metadata() -> tuple[tuple[str, str], ...] | None:
    """Metadata for a call to an executor: the current request id, if any."""
    request_id = CURRENT_REQUEST_ID.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else None
