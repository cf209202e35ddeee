"""A request's `google.protobuf.Duration` read as seconds: in range, or a typed refusal."""

from __future__ import annotations

from google.protobuf import duration_pb2

from tensorwasm_common.errors import InvalidArgumentError

# The range of a valid Duration (its definition in duration.proto): about 10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999


def duration_seconds(duration: duration_pb2.Duration, field: str) -> float:
    """The duration in seconds.

    Raises:
        InvalidArgumentError: the duration is not a valid one (seconds beyond about
            10,000 years, nanos beyond one second, or nanos of the other sign than
            seconds); metadata `field` names it.
    """
    seconds, nanos = duration.seconds, duration.nanos
    signs_agree = seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0)
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) > _MAX_NANOS or not signs_agree:
        raise InvalidArgumentError(
            f"{field} is not a valid duration: seconds within ±{MAX_DURATION_SECONDS}, "
            f"nanos within ±{_MAX_NANOS} and of the same sign",
            metadata={"field": field},
        )
    return seconds + nanos / 1e9
