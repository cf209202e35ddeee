"""The executor reads a request's limits: an invalid timeout is a named refusal."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.errors import InvalidArgumentError
from tensorwasm_executor.servicer import limits_from_wire


def test_the_executor_refuses_an_overflowing_timeout() -> None:
    limits = invocation_pb2.InvocationLimits(timeout=duration_pb2.Duration(seconds=2**62))
    with pytest.raises(InvalidArgumentError) as caught:
        limits_from_wire(limits)
    assert caught.value.metadata == {"field": "limits.timeout"}
