"""Per-tenant limit ceilings, and the limits a call actually runs with on the wire.

A call's limits are, field by field: the request's, else the function's defaults
(set at deploy), then clamped to the tenant's ceilings (a ceiling also fills a field
left unset, since the executor's default could exceed it); the executor clamps again
to its own caps (`tensorwasm_common.call_limits.resolve_call_limits`). On the wire a
zero field is unset.

The ceilings file (`TENSORWASM_GATEWAY_TENANT_LIMITS_FILE`) is JSON:

    {"default": {"timeout_seconds": 30, "max_memory_bytes": 134217728},
     "tenants": {"acme": {"timeout_seconds": 120, "fuel": 5000000000}}}

Keys: timeout_seconds, max_output_bytes, fuel, max_memory_bytes (positive numbers). A
tenant's entry replaces the default entry as a whole. A fuel ceiling needs executors
with fuel metering on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.call_limits import UNSET, CallLimits, resolve_call_limits
from tensorwasm_common.durations import duration_seconds
from tensorwasm_common.settings import SettingsError


def _ceiling(where: str, entry: object) -> CallLimits:
    if not isinstance(entry, Mapping):
        raise SettingsError(f"tenant limits: {where} must be an object")
    known = {f.name for f in fields(CallLimits)}
    unknown = set(entry) - known
    if unknown:
        raise SettingsError(f"tenant limits: {where} has unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, value in entry.items():
        integral = key != "timeout_seconds"
        ok = isinstance(value, int) if integral else isinstance(value, int | float)
        if not ok or isinstance(value, bool) or not 0 < value < math.inf:
            raise SettingsError(f"tenant limits: {where}.{key} must be a positive number")
        values[key] = value
    return CallLimits(**values)


class TenantCeilings:
    """The ceilings of every tenant: its own entry, else the default entry (a None
    field: no ceiling beyond the executor's)."""

    def __init__(
        self, default: CallLimits = UNSET, tenants: Mapping[str, CallLimits] | None = None
    ) -> None:
        self._default = default
        self._tenants = dict(tenants or {})

    @classmethod
    def load(cls, path: Path | None) -> TenantCeilings:
        """Reads the ceilings file; no file means no ceilings. SettingsError when malformed."""
        if path is None:
            return cls()
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"tenant limits file {path}: {exc}") from None
        if not isinstance(document, Mapping) or set(document) - {"default", "tenants"}:
            raise SettingsError("tenant limits: expected {'default': {...}, 'tenants': {...}}")
        tenants = document.get("tenants", {})
        if not isinstance(tenants, Mapping):
            raise SettingsError("tenant limits: 'tenants' must be an object")
        return cls(
            _ceiling("default", document.get("default", {})),
            {name: _ceiling(f"tenants.{name}", entry) for name, entry in tenants.items()},
        )

    def of(self, tenant: str) -> CallLimits:
        """The tenant's ceiling."""
        return self._tenants.get(tenant, self._default)


def limits_from_wire(limits: invocation_pb2.InvocationLimits, field: str = "limits") -> CallLimits:
    """The message's limits; a zero field (or no timeout) is unset.

    Raises:
        InvalidArgumentError: the timeout is not a valid duration (named `{field}.timeout`).
    """
    if not limits.ByteSize():  # nothing set (most calls): the shared UNSET, not a copy
        return UNSET
    timeout = (
        duration_seconds(limits.timeout, f"{field}.timeout") if limits.HasField("timeout") else 0
    )
    return CallLimits(
        timeout_seconds=timeout or None,
        max_output_bytes=limits.max_output_bytes or None,
        fuel=limits.fuel or None,
        max_memory_bytes=limits.max_memory_bytes or None,
    )


def limits_to_wire(limits: CallLimits) -> invocation_pb2.InvocationLimits:
    """The limits as a message (an unset field is zero, an unset timeout absent)."""
    wire = invocation_pb2.InvocationLimits(
        max_output_bytes=limits.max_output_bytes or 0,
        fuel=limits.fuel or 0,
        max_memory_bytes=limits.max_memory_bytes or 0,
    )
    if limits.timeout_seconds is not None:
        wire.timeout.FromNanoseconds(round(limits.timeout_seconds * 1e9))
    return wire


def check_limits(limits: invocation_pb2.InvocationLimits, field: str) -> None:
    """Raises InvalidArgumentError for negative limits (zero means "default")."""
    limits_from_wire(limits, field).check(field)


def effective_limits(
    requested: invocation_pb2.InvocationLimits,
    defaults: invocation_pb2.InvocationLimits,
    ceiling: CallLimits,
) -> invocation_pb2.InvocationLimits:
    """The limits a call runs with (see the module docstring)."""
    resolved = resolve_call_limits(
        limits_from_wire(requested),
        defaults=limits_from_wire(defaults, "config.default_limits"),
        ceiling=ceiling,
    )
    return limits_to_wire(resolved)
