"""Per-tenant limit ceilings and the limits a call actually runs with.

A call's limits are, field by field: the request's, else the function's defaults
(set at deploy), then clamped to the tenant's ceilings (a ceiling also fills a field
left unset, since the executor's default could exceed it). The executor clamps
again to its own caps.

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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.errors import InvalidArgumentError
from tensorwasm_common.settings import SettingsError


@dataclass(frozen=True)
class Ceiling:
    """The most a tenant's calls may ask for; None: no ceiling beyond the executor's."""

    timeout_seconds: float | None = None
    max_output_bytes: int | None = None
    fuel: int | None = None
    max_memory_bytes: int | None = None


NO_CEILING = Ceiling()


def _ceiling(where: str, entry: object) -> Ceiling:
    if not isinstance(entry, Mapping):
        raise SettingsError(f"tenant limits: {where} must be an object")
    known = {f.name for f in fields(Ceiling)}
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
    return Ceiling(**values)


class TenantCeilings:
    """The ceilings of every tenant: its own entry, else the default entry."""

    def __init__(
        self, default: Ceiling = NO_CEILING, tenants: Mapping[str, Ceiling] | None = None
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

    def of(self, tenant: str) -> Ceiling:
        """The tenant's ceiling."""
        return self._tenants.get(tenant, self._default)


def check_limits(limits: invocation_pb2.InvocationLimits, field: str) -> None:
    """Raises InvalidArgumentError for negative limits (zero means "default")."""
    bad = [name for name in ("max_output_bytes", "max_memory_bytes") if getattr(limits, name) < 0]
    if limits.HasField("timeout") and limits.timeout.ToTimedelta().total_seconds() < 0:
        bad.append("timeout")
    if bad:
        raise InvalidArgumentError(
            f"{field}.{bad[0]} must not be negative", metadata={"field": f"{field}.{bad[0]}"}
        )


def effective_limits(
    requested: invocation_pb2.InvocationLimits,
    defaults: invocation_pb2.InvocationLimits,
    ceiling: Ceiling,
) -> invocation_pb2.InvocationLimits:
    """The limits a call runs with (see the module docstring)."""
    check_limits(requested, "limits")
    merged = invocation_pb2.InvocationLimits()
    merged.CopyFrom(defaults)
    if requested.HasField("timeout") and requested.timeout.ToTimedelta().total_seconds() > 0:
        merged.timeout.CopyFrom(requested.timeout)
    for name in ("max_output_bytes", "fuel", "max_memory_bytes"):
        if getattr(requested, name):
            setattr(merged, name, getattr(requested, name))
    if ceiling.timeout_seconds is not None:
        current = merged.timeout.ToTimedelta().total_seconds() if merged.HasField("timeout") else 0
        if not 0 < current <= ceiling.timeout_seconds:
            merged.timeout.FromNanoseconds(round(ceiling.timeout_seconds * 1e9))
    for name in ("max_output_bytes", "fuel", "max_memory_bytes"):
        cap = getattr(ceiling, name)
        if cap is not None and not 0 < getattr(merged, name) <= cap:
            setattr(merged, name, cap)
    return merged
