"""Unit tests for the limits of a call on the gateway's wire (tensorwasm_gateway.limits)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.call_limits import UNSET, CallLimits
from tensorwasm_common.errors import InvalidArgumentError
from tensorwasm_gateway.limits import check_limits, limits_from_wire, limits_to_wire


def test_a_message_without_limits_is_the_shared_unset() -> None:
    assert limits_from_wire(invocation_pb2.InvocationLimits()) is UNSET


def test_set_fields_are_read_and_zero_ones_are_unset() -> None:
    wire = invocation_pb2.InvocationLimits(
        timeout=duration_pb2.Duration(seconds=2, nanos=500_000_000), fuel=7
    )
    assert limits_from_wire(wire) == CallLimits(timeout_seconds=2.5, fuel=7)
    zero_timeout = invocation_pb2.InvocationLimits(timeout=duration_pb2.Duration())
    assert limits_from_wire(zero_timeout) == UNSET
    assert limits_to_wire(CallLimits(timeout_seconds=2.5, fuel=7)) == wire


def test_a_negative_timeout_is_refused_by_name() -> None:
    negative = invocation_pb2.InvocationLimits(timeout=duration_pb2.Duration(seconds=-1))
    with pytest.raises(InvalidArgumentError, match=r"limits\.timeout"):
        check_limits(negative, "limits")
