"""The tenant a call acts for: the id grammar of `x-tensorwasm-tenant`."""

from __future__ import annotations

from tensorwasm_common.errors import InvalidNameError
from tensorwasm_common.tenants import TENANT_PATTERN


def validate_tenant(tenant: str) -> str:
    """The tenant id, validated."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidNameError(
            "tenant must match [a-z0-9][a-z0-9_-]{0,62}", metadata={"tenant": tenant[:200]}
        )
    return tenant
