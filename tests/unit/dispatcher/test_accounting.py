"""Admission (requests in flight, in all and per tenant) and the dispatcher's settings."""

from __future__ import annotations

import pytest
from tensorwasm_common.errors import Code
from tensorwasm_common.settings import SettingsError, load_settings
from tensorwasm_dispatcher.accounting import Admission, Ledger, TenantUsage
from tensorwasm_dispatcher.errors import DispatcherSaturatedError, TenantBusyError
from tensorwasm_dispatcher.settings import DispatcherSettings


def test_a_tenant_at_its_cap_is_turned_away_with_a_retry_delay() -> None:
    admission = Admission(max_in_flight=4, max_per_tenant=2, retry_after_seconds=0.05)
    held = [admission.acquire("flood"), admission.acquire("flood")]
    with pytest.raises(TenantBusyError) as caught:
        admission.acquire("flood")
    error = caught.value
    assert (error.code, error.reason) == (Code.RESOURCE_EXHAUSTED, "GPU_TENANT_BUSY")
    assert error.retry_after_seconds == 0.05
    assert error.metadata == {"tenant": "flood", "limit": "2"}
    light = admission.acquire("light")  # the flood does not reach another tenant
    held[0].release()
    held.append(admission.acquire("flood"))
    assert admission.in_flight("flood") == 2 and admission.in_flight() == 3
    light.release()
    light.release()  # idempotent
    assert admission.in_flight() == 2


def test_the_dispatcher_cap_holds_across_tenants() -> None:
    admission = Admission(max_in_flight=3, max_per_tenant=2, retry_after_seconds=0.1)
    slots = [admission.acquire(t) for t in ("a", "b", "c")]
    with pytest.raises(DispatcherSaturatedError) as caught:
        admission.acquire("d")
    assert (caught.value.code, caught.value.reason) == (
        Code.RESOURCE_EXHAUSTED,
        "DISPATCHER_SATURATED",
    )
    assert caught.value.retry_after_seconds == 0.1
    for slot in slots:
        slot.release()
    assert admission.in_flight() == 0
    admission.acquire("d")


def test_invalid_caps_are_refused() -> None:
    with pytest.raises(ValueError):
        Admission(max_in_flight=0, max_per_tenant=1, retry_after_seconds=1)
    with pytest.raises(ValueError):
        Ledger(-1)


def test_usage_of_an_unknown_tenant_is_zero() -> None:
    usage = Ledger(123).usage("nobody")
    assert (usage.tenant, usage.memory_quota_bytes, usage.launches) == ("nobody", 123, 0)


def test_settings_defaults() -> None:
    settings = DispatcherSettings()
    assert settings.backend == "auto"
    assert settings.tenant_memory_quota_bytes == 1 << 30
    assert (settings.max_in_flight, settings.tenant_in_flight_limit) == (64, 32)
    assert settings.max_message_bytes == 96 << 20  # a 64 MiB batch and its framing


def test_settings_from_the_environment() -> None:
    settings = load_settings(
        DispatcherSettings,
        "dispatcher",
        environ={
            "TENSORWASM_DISPATCHER_BACKEND": "cpu",
            "TENSORWASM_DISPATCHER_TENANT_MEMORY_QUOTA_BYTES": "4096",
            "TENSORWASM_DISPATCHER_MAX_IN_FLIGHT": "8",
            "TENSORWASM_DISPATCHER_MAX_IN_FLIGHT_PER_TENANT": "1",
        },
    )
    assert (settings.backend, settings.tenant_memory_quota_bytes) == ("cpu", 4096)
    assert (settings.max_in_flight, settings.tenant_in_flight_limit) == (8, 1)


@pytest.mark.parametrize(
    "field",
    [
        {"backend": "tpu"},
        {"tenant_memory_quota_bytes": -1},
        {"max_in_flight": 0},
        {"max_in_flight_per_tenant": -1},
        {"retry_after_seconds": 0},
        {"workers": 0},
        {"session_idle_ttl_seconds": 0},
    ],
)
def test_bad_settings_fail_fast(field: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        DispatcherSettings(**field)  # type: ignore[arg-type]


def test_absorb_adds_a_workers_changes_and_keeps_the_peak_a_maximum() -> None:
    ledger = Ledger(1 << 20)
    ledger.record("t", rejected_requests=2)
    first = TenantUsage("t", staged_bytes_total=100, staged_bytes_current=40,
                        staged_bytes_peak=60, launches=3, open_sessions=1)  # fmt: skip
    ledger.absorb("t", TenantUsage("t"), first)
    # The worker died: its current state goes, its cumulative counters stay.
    gone = TenantUsage("t", staged_bytes_total=100, staged_bytes_peak=60, launches=3)
    ledger.absorb("t", first, gone)
    # A new worker reports from zero again.
    fresh = TenantUsage("t", staged_bytes_total=10, staged_bytes_current=10,
                        staged_bytes_peak=10, launches=1)  # fmt: skip
    ledger.absorb("t", TenantUsage("t"), fresh)
    usage = ledger.usage("t")
    assert (usage.staged_bytes_total, usage.staged_bytes_current) == (110, 10)
    assert (usage.staged_bytes_peak, usage.launches, usage.open_sessions) == (60, 4, 0)
    assert usage.rejected_requests == 2
