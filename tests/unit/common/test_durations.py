"""Reading request durations: valid ones as seconds, anything else a named refusal."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from tensorwasm_common.durations import MAX_DURATION_SECONDS, duration_seconds
from tensorwasm_common.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [(0, 0, 0.0), (1, 500_000_000, 1.5), (-1, -500_000_000, -1.5), (0, -5, -5e-9)],
)
def test_a_valid_duration_is_read_as_seconds(seconds: int, nanos: int, expected: float) -> None:
    duration = duration_pb2.Duration(seconds=seconds, nanos=nanos)
    assert duration_seconds(duration, "timeout") == pytest.approx(expected)


def test_the_largest_valid_duration_is_read() -> None:
    duration = duration_pb2.Duration(seconds=MAX_DURATION_SECONDS, nanos=999_999_999)
    assert duration_seconds(duration, "timeout") > MAX_DURATION_SECONDS


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (2**62, 0),
        (-(2**62), 0),
        (MAX_DURATION_SECONDS + 1, 0),
        (1, 1_000_000_000),
        (0, -1_000_000_000),
        (1, -1),
        (-1, 1),
    ],
)
def test_an_invalid_duration_is_refused_naming_the_field(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        duration_seconds(duration_pb2.Duration(seconds=seconds, nanos=nanos), "limits.timeout")
    assert caught.value.metadata == {"field": "limits.timeout"}
