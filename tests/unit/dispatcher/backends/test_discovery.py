"""Tests of device discovery: cpu fallback, forced backends, driver error handling."""

from __future__ import annotations

import enum
import sys
import types
from typing import Any

import pytest
from tensorwasm_common.errors import Code, InvalidArgumentError
from tensorwasm_dispatcher.backends import discovery
from tensorwasm_dispatcher.backends.discovery import (
    BackendKind,
    CudaCallError,
    DeviceInfo,
    DeviceReport,
    cpu_report,
    discover,
    probe_cuda,
)
from tensorwasm_dispatcher.errors import CudaUnavailableError


def _cuda_present() -> bool:
    probed = probe_cuda()
    return isinstance(probed, DeviceReport) and len(probed.devices) > 0


def _gpu_selected(config: pytest.Config) -> bool:
    return "gpu" in (config.getoption("markexpr", default="") or "")


class _CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_NO_DEVICE = 100


class _Attr(enum.IntEnum):
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def _fake_driver(
    *, count: int = 2, init_result: _CUresult = _CUresult.CUDA_SUCCESS
) -> types.SimpleNamespace:
    """A stand-in for `cuda.bindings.driver` that mimics its tuple-returning calls."""
    ok = _CUresult.CUDA_SUCCESS
    cc = {0: (9, 0), 1: (8, 6)}

    def get_attribute(attr: _Attr, dev: int) -> tuple[_CUresult, int]:
        major, minor = cc[dev]
        is_major = attr is _Attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        return ok, major if is_major else minor

    return types.SimpleNamespace(
        CUresult=_CUresult,
        CUdevice_attribute=_Attr,
        cuInit=lambda flags: (init_result,),
        cuDriverGetVersion=lambda: (ok, 13000),
        cuDeviceGetCount=lambda: (ok, count),
        cuDeviceGet=lambda ordinal: (ok, ordinal),
        cuDeviceGetName=lambda length, dev: (ok, f"Fake GPU {dev}".encode().ljust(length, b"\0")),
        cuDeviceGetAttribute=get_attribute,
        cuDeviceTotalMem=lambda dev: (ok, (dev + 1) * 80 << 30),
    )


def _install_driver(monkeypatch: pytest.MonkeyPatch, driver: Any) -> None:
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.driver = driver  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)


def _cuda_report() -> DeviceReport:
    gpu = DeviceInfo(0, "Fake GPU", (9, 0), 80 << 30)
    return DeviceReport(BackendKind.CUDA, (gpu,), 13000, "")


def _patch_probe(monkeypatch: pytest.MonkeyPatch, result: DeviceReport | str) -> None:
    monkeypatch.setattr(discovery, "probe_cuda", lambda: result)


# --- the real environment ------------------------------------------------------------


def test_auto_falls_back_to_cpu_without_a_driver() -> None:
    if _cuda_present():
        pytest.skip("a CUDA device is present")
    report = discover("auto")
    assert report.backend is BackendKind.CPU
    assert report.fallback_reason
    assert report.driver_version == 0
    assert len(report.devices) == 1


def test_probe_reports_why_without_a_driver() -> None:
    if _cuda_present():
        pytest.skip("a CUDA device is present")
    probed = probe_cuda()
    if isinstance(probed, DeviceReport):  # a driver without devices
        assert probed.devices == ()
    else:
        assert probed.strip()


def test_cuda_preference_raises_without_a_driver() -> None:
    if _cuda_present():
        pytest.skip("a CUDA device is present")
    with pytest.raises(CudaUnavailableError) as info:
        discover("cuda")
    assert info.value.code is Code.FAILED_PRECONDITION
    assert info.value.reason == "CUDA_UNAVAILABLE"
    assert info.value.metadata["detail"]


def test_cpu_preference() -> None:
    report = discover("cpu")
    assert report.backend is BackendKind.CPU
    assert report.fallback_reason == "cpu backend selected by setting"


def test_cpu_report() -> None:
    report = cpu_report("why")
    assert report.backend is BackendKind.CPU
    assert report.fallback_reason == "why"
    assert report.driver_version == 0
    (device,) = report.devices
    assert device.ordinal == 0
    assert device.name
    assert device.compute_capability == (0, 0)
    assert device.total_memory_bytes > 0


def test_unknown_preference() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        discover("tpu")
    assert info.value.metadata == {"field": "preference"}


# --- discover's decisions, with probe_cuda replaced --------------------------------------


def test_auto_picks_cuda_when_probe_finds_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_probe(monkeypatch, _cuda_report())
    assert discover("auto") == _cuda_report()
    assert discover("cuda") == _cuda_report()
    assert discover("cpu").backend is BackendKind.CPU


def test_auto_falls_back_when_driver_has_no_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_probe(monkeypatch, DeviceReport(BackendKind.CUDA, (), 13000, ""))
    report = discover("auto")
    assert report.backend is BackendKind.CPU
    assert "no devices" in report.fallback_reason
    with pytest.raises(CudaUnavailableError):
        discover("cuda")


def test_auto_carries_the_probe_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_probe(monkeypatch, "no CUDA driver found")
    assert discover("auto").fallback_reason == "no CUDA driver found"
    with pytest.raises(CudaUnavailableError) as info:
        discover("cuda")
    assert info.value.metadata == {"detail": "no CUDA driver found"}


# --- probe_cuda against a fake driver module -------------------------------------------


def test_probe_reads_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_driver(monkeypatch, _fake_driver(count=2))
    probed = probe_cuda()
    assert probed == DeviceReport(
        backend=BackendKind.CUDA,
        devices=(
            DeviceInfo(0, "Fake GPU 0", (9, 0), 80 << 30),
            DeviceInfo(1, "Fake GPU 1", (8, 6), 160 << 30),
        ),
        driver_version=13000,
        fallback_reason="",
    )


def test_probe_reports_a_failing_call(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_driver(monkeypatch, _fake_driver(init_result=_CUresult.CUDA_ERROR_NO_DEVICE))
    probed = probe_cuda()
    assert isinstance(probed, str)
    assert "CUDA_ERROR_NO_DEVICE" in probed


def test_probe_reports_a_raising_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = _fake_driver()

    def missing_library(flags: int) -> tuple[Any, ...]:
        raise RuntimeError("libcuda.so.1: cannot open shared object file")

    driver.cuInit = missing_library
    _install_driver(monkeypatch, driver)
    probed = probe_cuda()
    assert isinstance(probed, str)
    assert "libcuda.so.1" in probed


def test_probe_reports_a_failed_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    probed = probe_cuda()
    assert isinstance(probed, str)
    assert "ImportError" in probed or "ModuleNotFoundError" in probed


def test_check_returns_values_and_raises_on_error() -> None:
    assert discovery._check((_CUresult.CUDA_SUCCESS,)) == ()
    assert discovery._check((_CUresult.CUDA_SUCCESS, 7, "x")) == (7, "x")
    assert discovery._check(_CUresult.CUDA_SUCCESS) == ()
    with pytest.raises(CudaCallError) as info:
        discovery._check((_CUresult.CUDA_ERROR_NO_DEVICE, 0))
    assert info.value.result_name == "CUDA_ERROR_NO_DEVICE"
    assert "100" in str(info.value)


# --- a real GPU ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_machine_discovers_cuda(request: pytest.FixtureRequest) -> None:
    if not _gpu_selected(request.config):
        pytest.skip("GPU test: run with `pytest -m gpu` on a machine with an NVIDIA device")
    report = discover("auto")
    assert report.backend is BackendKind.CUDA, report.fallback_reason
    assert len(report.devices) >= 1
    assert report.driver_version > 0
    for device in report.devices:
        assert device.compute_capability >= (7, 0), device
        assert device.total_memory_bytes > 0
        assert device.name
