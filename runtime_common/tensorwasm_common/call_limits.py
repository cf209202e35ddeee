"""The limits of one guest call, and their resolution field by field.

Every service that decides a call's limits uses `resolve_call_limits`: the gateway
(request → the function's defaults → the tenant's ceiling) and the executor (request →
its defaults → its own caps). For each field, in this order:

1. the request's value, when set;
2. else the default;
3. a ceiling clamps the value and also fills a field still unset (so that a limit
   the next hop would default can never exceed it);
4. a cap clamps a set value (and fills nothing).

None means "unset" throughout. Translating the `InvocationLimits` message to and from
`CallLimits` is each servicer's job (this module knows no protobuf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from tensorwasm_common.errors import InvalidArgumentError

_N = TypeVar("_N", int, float)
# The field names of the InvocationLimits message, for error messages.
_WIRE_NAMES = {"timeout_seconds": "timeout"}
# The order in which fields are checked (the first one out of range is reported).
_CHECK_ORDER = ("max_output_bytes", "max_memory_bytes", "fuel", "timeout_seconds")


@dataclass(frozen=True)
class CallLimits:
    """What one guest call may use; a None field is unset (a later stage decides)."""

    timeout_seconds: float | None = None
    max_output_bytes: int | None = None
    fuel: int | None = None
    max_memory_bytes: int | None = None

    def check(self, where: str = "limits") -> CallLimits:
        """Returns these limits when every field is in range.

        Raises:
            InvalidArgumentError: a field is negative or the timeout is not finite;
                named `{where}.{field}` with the message's field names (`timeout`).
        """
        for name in _CHECK_ORDER:
            value = getattr(self, name)
            if value is None:
                continue
            field = f"{where}.{_WIRE_NAMES.get(name, name)}"
            if value < 0:
                raise InvalidArgumentError(
                    f"{field} must not be negative", metadata={"field": field}
                )
            if not math.isfinite(value):
                raise InvalidArgumentError(f"{field} must be finite", metadata={"field": field})
        return self


UNSET = CallLimits()


def resolve_call_limits(
    requested: CallLimits,
    *,
    defaults: CallLimits = UNSET,
    ceiling: CallLimits = UNSET,
    caps: CallLimits = UNSET,
) -> CallLimits:
    """The limits a call runs with (see the module docstring).

    Raises:
        InvalidArgumentError: a requested field is out of range (see `CallLimits.check`).
    """
    requested.check("limits")
    return CallLimits(
        timeout_seconds=_field(
            requested.timeout_seconds,
            defaults.timeout_seconds,
            ceiling.timeout_seconds,
            caps.timeout_seconds,
        ),
        max_output_bytes=_field(
            requested.max_output_bytes,
            defaults.max_output_bytes,
            ceiling.max_output_bytes,
            caps.max_output_bytes,
        ),
        fuel=_field(requested.fuel, defaults.fuel, ceiling.fuel, caps.fuel),
        max_memory_bytes=_field(
            requested.max_memory_bytes,
            defaults.max_memory_bytes,
            ceiling.max_memory_bytes,
            caps.max_memory_bytes,
        ),
    )


def _field(
    requested: _N | None, default: _N | None, ceiling: _N | None, cap: _N | None
) -> _N | None:
    """One field: the request's, else the default; clamped (and filled) by the ceiling,
    then clamped by the cap."""
    value = default if requested is None else requested
    if ceiling is not None and (value is None or value > ceiling):
        value = ceiling
    if cap is not None and value is not None and value > cap:
        value = cap
    return value
