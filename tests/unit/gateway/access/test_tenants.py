"""Unit tests for tensorwasm_gateway.access.tenants: the tenant id grammar."""

from __future__ import annotations

import pytest
from tensorwasm_common.errors import InvalidNameError
from tensorwasm_gateway.access.tenants import validate_tenant


@pytest.mark.parametrize("tenant", ["default", "acme", "0", "a_b-c", "9" * 63])
def test_validate_tenant_accepts(tenant: str) -> None:
    assert validate_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "_acme", "-acme", "Acme", "ac me", "a/b", "9" * 64])
def test_validate_tenant_rejects(tenant: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_tenant(tenant)
    assert caught.value.reason == "INVALID_NAME"
    assert caught.value.metadata == {"tenant": tenant}
