"""Unit tests for tensorwasm_common.call_limits: each field resolved request → default →
ceiling → cap, and values out of range."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import pytest
from tensorwasm_common.call_limits import UNSET, CallLimits, resolve_call_limits
from tensorwasm_common.errors import Code, InvalidArgumentError

FIELDS = ("timeout_seconds", "max_output_bytes", "fuel", "max_memory_bytes")


def _with(name: str, value: float | None) -> CallLimits:
    return replace(UNSET, **{name: value})


def _resolved(
    name: str,
    requested: float | None = None,
    default: float | None = None,
    ceiling: float | None = None,
    cap: float | None = None,
) -> float | None:
    limits = resolve_call_limits(
        _with(name, requested),
        defaults=_with(name, default),
        ceiling=_with(name, ceiling),
        caps=_with(name, cap),
    )
    others = {f: getattr(limits, f) for f in FIELDS if f != name}
    assert others == dict.fromkeys(others), "one field never leaks into another"
    value: float | None = getattr(limits, name)
    return value


@pytest.mark.parametrize("name", FIELDS)
def test_nothing_set_stays_unset(name: str) -> None:
    assert _resolved(name) is None
    assert resolve_call_limits(UNSET) == UNSET


@pytest.mark.parametrize("name", FIELDS)
def test_request_wins_over_default(name: str) -> None:
    assert _resolved(name, requested=5, default=9) == 5
    assert _resolved(name, requested=9, default=5) == 9


@pytest.mark.parametrize("name", FIELDS)
def test_default_fills_an_unset_request(name: str) -> None:
    assert _resolved(name, default=7) == 7


@pytest.mark.parametrize("name", FIELDS)
def test_ceiling_clamps_and_fills(name: str) -> None:
    assert _resolved(name, requested=50, ceiling=10) == 10
    assert _resolved(name, default=50, ceiling=10) == 10
    assert _resolved(name, requested=3, default=50, ceiling=10) == 3
    assert _resolved(name, ceiling=10) == 10  # filled: the next hop's default may be higher


@pytest.mark.parametrize("name", FIELDS)
def test_cap_clamps_but_never_fills(name: str) -> None:
    assert _resolved(name, requested=50, cap=20) == 20
    assert _resolved(name, default=50, cap=20) == 20
    assert _resolved(name, requested=5, cap=20) == 5
    assert _resolved(name, cap=20) is None


@pytest.mark.parametrize("name", FIELDS)
def test_stages_compose(name: str) -> None:
    # request 50 → ceiling 30 → cap 20
    assert _resolved(name, requested=50, default=1, ceiling=30, cap=20) == 20
    # nothing asked: ceiling 30 fills, cap 40 keeps it
    assert _resolved(name, ceiling=30, cap=40) == 30


def test_zero_is_a_value_not_unset() -> None:
    # 0 output bytes keeps nothing; only None means "unset".
    assert _resolved("max_output_bytes", requested=0, default=100) == 0
    assert _resolved("max_output_bytes", default=0, cap=5) == 0


def test_executor_resolution() -> None:
    """The executor's use: its default timeout and output cap, clamped to its caps."""
    defaults = CallLimits(timeout_seconds=10.0, max_output_bytes=1 << 20)
    caps = CallLimits(timeout_seconds=300.0, max_output_bytes=1 << 20)
    got = resolve_call_limits(
        CallLimits(timeout_seconds=900.0, max_output_bytes=1 << 30, fuel=7),
        defaults=defaults,
        caps=caps,
    )
    assert got == CallLimits(timeout_seconds=300.0, max_output_bytes=1 << 20, fuel=7)
    assert resolve_call_limits(UNSET, defaults=defaults, caps=caps) == defaults


@pytest.mark.parametrize(
    ("name", "wire_name"),
    [
        ("max_output_bytes", "max_output_bytes"),
        ("max_memory_bytes", "max_memory_bytes"),
        ("fuel", "fuel"),
        ("timeout_seconds", "timeout"),
    ],
)
def test_negative_request_is_refused(name: str, wire_name: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        resolve_call_limits(_with(name, -1))
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert str(caught.value) == f"limits.{wire_name} must not be negative"
    assert caught.value.metadata == {"field": f"limits.{wire_name}"}


@pytest.mark.parametrize("timeout", [math.inf, math.nan])
def test_timeout_must_be_finite(timeout: float) -> None:
    with pytest.raises(InvalidArgumentError, match=r"limits\.timeout must be finite"):
        resolve_call_limits(CallLimits(timeout_seconds=timeout))


def test_check_names_the_first_bad_field_where_asked() -> None:
    bad = CallLimits(timeout_seconds=-1.0, max_output_bytes=-1, max_memory_bytes=-1)
    with pytest.raises(InvalidArgumentError) as caught:
        bad.check("config.default_limits")
    assert caught.value.metadata == {"field": "config.default_limits.max_output_bytes"}
    ok = CallLimits(timeout_seconds=0.5, max_output_bytes=0, fuel=1, max_memory_bytes=1)
    assert ok.check() is ok


def test_imports_no_grpc_or_protobuf() -> None:
    code = (
        "import sys, tensorwasm_common.call_limits\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
