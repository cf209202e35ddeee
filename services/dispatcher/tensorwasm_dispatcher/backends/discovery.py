"""Device discovery: CUDA devices through the driver API, else the cpu backend."""

from __future__ import annotations

import enum
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorwasm_common.errors import InvalidArgumentError

from tensorwasm_dispatcher.errors import CudaUnavailableError

_CUDA_SUCCESS = 0
_NAME_LENGTH = 256
_PREFERENCES = ("auto", "cpu", "cuda")


class BackendKind(enum.Enum):
    """The kind of backend that executes kernels."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class DeviceInfo:
    """One device: its ordinal, name, compute capability and total memory."""

    ordinal: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int


@dataclass(frozen=True)
class DeviceReport:
    """The active backend, its devices, the CUDA driver version and why cpu, if it is."""

    backend: BackendKind
    devices: tuple[DeviceInfo, ...]
    driver_version: int
    fallback_reason: str


class CudaCallError(RuntimeError):
    """A CUDA driver call returned something other than CUDA_SUCCESS."""

    def __init__(self, result: Any, log: str = "") -> None:
        """Records the failing CUresult.

        Args:
            result: The CUresult the call returned.
            log: What the driver's JIT said about it (ptxas's diagnostics), if anything.
        """
        self.result = result
        self.result_name = str(getattr(result, "name", result))
        self.log = log
        detail = f": {log}" if log else ""
        super().__init__(f"{self.result_name} ({int(result)}){detail}")


def _check(result: Any) -> tuple[Any, ...]:
    """Checks a cuda-python driver call's result and returns its output values.

    Args:
        result: What the call returned: `(CUresult, value, ...)`, or a bare CUresult.

    Returns:
        The values after the CUresult (an empty tuple for calls without outputs).

    Raises:
        CudaCallError: The CUresult is not CUDA_SUCCESS.
    """
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != _CUDA_SUCCESS:
        raise CudaCallError(status)
    return tuple(values)


def _device_name(raw: bytes | str) -> str:
    """Decodes a NUL-terminated device name."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


def probe_cuda() -> DeviceReport | str:
    """Asks the CUDA driver for its devices.

    `cuda.bindings` is imported here, lazily, so that importing this module never needs
    CUDA. Every failure at this edge is caught: the import may raise ImportError (no
    cuda-python), RuntimeError or OSError (no libcuda), and driver calls may fail.

    Returns:
        A CUDA report (possibly with no devices), or a sentence saying why CUDA is
        unavailable.
    """
    try:
        from cuda.bindings import driver
    except Exception as exc:
        return f"cuda-python is unavailable: {type(exc).__name__}: {exc}"
    try:
        _check(driver.cuInit(0))
        (driver_version,) = _check(driver.cuDriverGetVersion())
        (count,) = _check(driver.cuDeviceGetCount())
        devices = []
        for ordinal in range(int(count)):
            (device,) = _check(driver.cuDeviceGet(ordinal))
            (raw_name,) = _check(driver.cuDeviceGetName(_NAME_LENGTH, device))
            (major,) = _check(
                driver.cuDeviceGetAttribute(
                    driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device
                )
            )
            (minor,) = _check(
                driver.cuDeviceGetAttribute(
                    driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device
                )
            )
            (total,) = _check(driver.cuDeviceTotalMem(device))
            devices.append(
                DeviceInfo(
                    ordinal=ordinal,
                    name=_device_name(raw_name),
                    compute_capability=(int(major), int(minor)),
                    total_memory_bytes=int(total),
                )
            )
    except CudaCallError as exc:
        return f"CUDA driver call failed: {exc}"
    except Exception as exc:
        return f"CUDA driver is unavailable: {type(exc).__name__}: {exc}"
    return DeviceReport(
        backend=BackendKind.CUDA,
        devices=tuple(devices),
        driver_version=int(driver_version),
        fallback_reason="",
    )


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else `platform.processor()`, else the machine."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _physical_memory_bytes() -> int:
    """Total physical memory from sysconf, 0 where the platform lacks it."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_report(reason: str) -> DeviceReport:
    """Builds the cpu backend's report: one pseudo-device for the host.

    Args:
        reason: Why the cpu backend is active.

    Returns:
        A report with ordinal 0, the CPU model name, compute capability (0, 0), the
        physical memory size and driver version 0.
    """
    device = DeviceInfo(
        ordinal=0,
        name=_cpu_name(),
        compute_capability=(0, 0),
        total_memory_bytes=_physical_memory_bytes(),
    )
    return DeviceReport(
        backend=BackendKind.CPU, devices=(device,), driver_version=0, fallback_reason=reason
    )


def discover(preference: str = "auto") -> DeviceReport:
    """Chooses the backend.

    Args:
        preference: "auto" (CUDA when a device is found, else cpu), "cpu" or "cuda".

    Returns:
        The report of the chosen backend; on cpu, `fallback_reason` says why.

    Raises:
        CudaUnavailableError: `preference` is "cuda" and no CUDA device can be used
            (FAILED_PRECONDITION, reason CUDA_UNAVAILABLE).
        InvalidArgumentError: `preference` is none of the above.
    """
    if preference not in _PREFERENCES:
        raise InvalidArgumentError(
            f"device preference must be one of {list(_PREFERENCES)}, got {preference!r}",
            metadata={"field": "preference"},
        )
    if preference == "cpu":
        return cpu_report("cpu backend selected by setting")
    probed = probe_cuda()
    if isinstance(probed, DeviceReport) and not probed.devices:
        probed = f"CUDA driver {probed.driver_version} reports no devices"
    if isinstance(probed, DeviceReport):
        return probed
    if preference == "cuda":
        raise CudaUnavailableError(
            f"the cuda backend is required but unavailable: {probed}",
            metadata={"detail": probed},
        )
    return cpu_report(probed)
