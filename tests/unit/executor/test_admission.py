"""Admission control: bounded in-flight calls per executor and per tenant."""

from __future__ import annotations

import threading

import pytest
from tensorwasm_common.errors import Code
from tensorwasm_executor.admission import Admission
from tensorwasm_executor.errors import ExecutorSaturatedError, TenantCapacityExhaustedError


def test_tenant_cap_refuses_with_retry_and_frees_on_exit() -> None:
    admission = Admission(max_in_flight=4, max_per_tenant=2, retry_after_seconds=0.25)
    with admission.admit("a"), admission.admit("a"):
        with pytest.raises(TenantCapacityExhaustedError) as caught, admission.admit("a"):
            pass
        error = caught.value
        assert error.code == Code.RESOURCE_EXHAUSTED
        assert error.reason == "TENANT_CAPACITY_EXHAUSTED"
        assert error.retry_after_seconds == 0.25
        assert error.metadata == {"tenant": "a", "limit": "2"}
        with admission.admit("b"):  # another tenant still gets in
            assert admission.in_flight == 3
    assert admission.in_flight == 0
    assert admission.tenant_in_flight("a") == 0


def test_executor_cap_refuses_every_tenant_once_full() -> None:
    admission = Admission(max_in_flight=2, max_per_tenant=2)
    with admission.admit("a"), admission.admit("b"):
        with pytest.raises(ExecutorSaturatedError) as caught, admission.admit("c"):
            pass
        assert caught.value.reason == "EXECUTOR_SATURATED"
        assert caught.value.retry_after_seconds is not None
    with admission.admit("c"):
        assert admission.tenant_in_flight("c") == 1


def test_slot_is_released_when_the_call_raises() -> None:
    admission = Admission(max_in_flight=1, max_per_tenant=1)
    with pytest.raises(RuntimeError), admission.admit("a"):
        raise RuntimeError("guest setup failed")
    with admission.admit("a"):
        assert admission.in_flight == 1


def test_counts_stay_exact_under_threads() -> None:
    admission = Admission(max_in_flight=8, max_per_tenant=8)
    refused = 0
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        nonlocal refused
        barrier.wait()
        for _ in range(200):
            try:
                with admission.admit("t"):
                    assert admission.in_flight <= 8
            except ExecutorSaturatedError:
                with lock:
                    refused += 1
            except TenantCapacityExhaustedError:
                with lock:
                    refused += 1

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admission.in_flight == 0
    assert admission.tenant_in_flight("t") == 0


def test_invalid_caps_are_rejected() -> None:
    with pytest.raises(ValueError):
        Admission(max_in_flight=0, max_per_tenant=1)
