"""Unit tests for tensorwasm_gateway.instances.service: instance names."""

from __future__ import annotations

import pytest
from tensorwasm_common.errors import InvalidNameError
from tensorwasm_gateway.instances import instance_id_from_name

INSTANCE_ID = "0123456789abcdef0123456789abcdef"


def test_instance_id_from_name() -> None:
    assert instance_id_from_name(f"instances/{INSTANCE_ID}") == INSTANCE_ID


@pytest.mark.parametrize(
    "name",
    [
        "",
        INSTANCE_ID,
        f"functions/{INSTANCE_ID}",
        f"instances/{INSTANCE_ID.upper()}",
        f"instances/{INSTANCE_ID}0",
        f"instances/{INSTANCE_ID}\n",
        "instances/" + "x" * 500,
    ],
)
def test_instance_id_from_name_rejects(name: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        instance_id_from_name(name)
    assert caught.value.metadata == {"name": name[:200]}
