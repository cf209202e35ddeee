"""The cuda backend's module side: loading and JIT-linking PTX with ptxas's diagnostics,
and what a loaded kernel is, as the driver reports it.

A kernel's parameters (count and byte sizes) come from the driver
(`cuFuncGetParamCount`/`cuFuncGetParamInfo`), never from reading the PTX text: the driver
reads exactly that many bytes through `kernelParams`, so a launch whose argv does not match
them is refused before it reaches the driver. A kernel's device memory is its module's
image, its `.global` variables (sized by `cuModuleGetGlobal`), its constants, and the local
memory the driver reserves for it: local bytes per thread times every thread the device can
hold at once. It counts against the loading tenant's quota; a kernel whose local memory per
thread passes `MAX_LOCAL_BYTES_PER_THREAD` is refused outright.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tensorwasm_dispatcher.backends.discovery import CudaCallError

_log = logging.getLogger(__name__)

# Room for ptxas's diagnostics of a PTX the driver refuses.
JIT_LOG_BYTES = 8 << 10
# The most local memory (spills, local arrays) a kernel may use per thread: the driver
# reserves it for every resident thread (64 KiB would be ~17 GB on an H100).
MAX_LOCAL_BYTES_PER_THREAD = 16 << 10
# The module-scope `.global` variables of a PTX (their names, for `cuModuleGetGlobal`).
_GLOBAL = re.compile(r"(?m)^\s*(?:\.(?:visible|weak|extern)\s+)*\.global\b([^;]*);")
_GLOBAL_NAME = re.compile(r"(?<![.\w$%])([A-Za-z_$%][\w$]*)\s*(?:\[|=|$)")

Call = Callable[[Any], tuple[Any, ...]]


@dataclass(frozen=True)
class KernelFacts:
    """What the driver says about a loaded entry: its parameter sizes (None: it does not
    say) and the device memory it holds."""

    param_sizes: tuple[int, ...] | None
    device_bytes: int
    local_bytes_per_thread: int


def global_names(ptx: bytes) -> list[str]:
    """The names of the module-scope `.global` variables a PTX declares."""
    text = ptx.decode("utf-8", errors="replace")
    names = []
    for declaration in _GLOBAL.finditer(text):
        found = _GLOBAL_NAME.search(declaration[1].strip())
        if found is not None:
            names.append(found[1])
    return names


def log_text(log: bytearray) -> str:
    """The NUL-terminated text the driver wrote into a log buffer."""
    return bytes(log).split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


class ModuleLoading:
    """Loads modules and links PTX with a JIT error log; reads kernels' facts."""

    def __init__(self, driver: Any, call: Call, resident_threads: int) -> None:
        """Args:
        driver: `cuda.bindings.driver` (or a test's stand-in).
        call: The backend's CUresult check.
        resident_threads: Threads the device holds at once (SMs x threads per SM).
        """
        self._driver = driver
        self._call = call
        self.resident_threads = resident_threads

    def _log_options(self, log: bytearray) -> tuple[list[Any], list[Any]]:
        option = self._driver.CUjit_option
        return (
            [option.CU_JIT_ERROR_LOG_BUFFER, option.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES],
            [log, len(log)],
        )

    def load_image(self, image: bytes) -> Any:
        """Loads a cubin or NUL-terminated PTX image (the context must be current).

        Raises:
            CudaCallError: the driver refused it (with ptxas's diagnostics, if any).
        """
        buffer = ctypes.create_string_buffer(image)  # NUL-terminated, whatever the image
        log = bytearray(JIT_LOG_BYTES)
        options, values = self._log_options(log)
        result = self._driver.cuModuleLoadDataEx(
            ctypes.addressof(buffer), len(options), options, values
        )
        status, *outputs = result
        if int(status) != 0:
            raise CudaCallError(status, log_text(log))
        return outputs[0]

    def compile_ptx(self, ptx: bytes) -> bytes:
        """The cubin the driver's JIT linker makes of a PTX for this device (the context
        must be current).

        Raises:
            CudaCallError: the driver refused the PTX (with ptxas's diagnostics).
        """
        driver = self._driver
        image = ptx if ptx.endswith(b"\0") else ptx + b"\0"
        buffer = ctypes.create_string_buffer(image, len(image))
        log = bytearray(JIT_LOG_BYTES)
        options, values = self._log_options(log)
        (state,) = self._call(driver.cuLinkCreate(len(options), options, values))
        try:
            added = driver.cuLinkAddData(
                state,
                driver.CUjitInputType.CU_JIT_INPUT_PTX,
                ctypes.addressof(buffer),
                len(image),
                b"tensorwasm.ptx",
                0,
                [],
                [],
            )
            status = added[0] if isinstance(added, tuple) else added
            if int(status) != 0:
                raise CudaCallError(status, log_text(log))
            completed = driver.cuLinkComplete(state)
            if int(completed[0]) != 0:
                raise CudaCallError(completed[0], log_text(log))
            cubin, size = completed[1:]
            # The image belongs to the link state: copy it before destroying the state.
            return ctypes.string_at(int(cubin), int(size))
        finally:
            # Never raised from here: it would hide the error that brought us here.
            destroyed = driver.cuLinkDestroy(state)
            status = destroyed[0] if isinstance(destroyed, tuple) else destroyed
            if int(status) != 0:
                _log.warning("cuLinkDestroy failed", extra={"result": int(status)})

    def facts(self, module: Any, function: Any, ptx: bytes, image_bytes: int) -> KernelFacts:
        """The parameter sizes and device memory of a loaded entry (see the module doc)."""
        return KernelFacts(
            self._param_sizes(function),
            self._device_bytes(module, function, ptx, image_bytes),
            self._attribute(function, "CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES"),
        )

    def _param_sizes(self, function: Any) -> tuple[int, ...] | None:
        driver = self._driver
        try:
            (count,) = self._call(driver.cuFuncGetParamCount(function))
            sizes = []
            for index in range(int(count)):
                _, size = self._call(driver.cuFuncGetParamInfo(function, index))
                sizes.append(int(size))
        except (CudaCallError, RuntimeError) as exc:
            # A driver that cannot say (the bindings raise RuntimeError for a function the
            # driver lacks: before CUDA 12.4): the kernel's launches are refused.
            _log.warning("the driver does not report kernel parameters: %s", exc)
            return None
        return tuple(sizes)

    def _attribute(self, function: Any, name: str) -> int:
        attribute = getattr(self._driver.CUfunction_attribute, name)
        (value,) = self._call(self._driver.cuFuncGetAttribute(attribute, function))
        return int(value)

    def _device_bytes(self, module: Any, function: Any, ptx: bytes, image_bytes: int) -> int:
        total = image_bytes + self._attribute(function, "CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES")
        local = self._attribute(function, "CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES")
        total += local * self.resident_threads
        for name in global_names(ptx):
            found = self._driver.cuModuleGetGlobal(module, name.encode("utf-8"))
            if int(found[0]) == 0:
                total += int(found[2])
        return total
