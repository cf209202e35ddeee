"""The state of a group of thread blocks being executed together, and their memory.

Every register holds one value per thread: a NumPy array over the group's threads, or a
NumPy scalar while all threads agree (parameters, constants, uniform loop counters), which
saves both memory and time. Global memory is one flat byte array holding the launch's
buffers (each at its own base with a guard gap, so running past one faults); shared memory
is one row per block, local memory one row per thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Value = Any  # a NumPy array over the threads, or a NumPy scalar
Mask = npt.NDArray[np.bool_] | None  # the threads an instruction runs for (None: all)

# Generic addresses of the shared and local windows (cvta.shared / cvta.local).
SHARED_WINDOW = 1 << 48
LOCAL_WINDOW = 2 << 48
WINDOW_BYTES = 1 << 32


class Fault(Exception):  # noqa: N818 - a kernel's outcome, reported as a launch failure
    """A thread touched memory it may not (an illegal or misaligned address)."""

    def __init__(self, lane: int, address: int, what: str) -> None:
        super().__init__(what)
        self.lane = lane
        self.address = address
        self.what = what
        self.instruction: object = None  # the faulting instruction, set by the scheduler


class TrapError(Exception):
    """The kernel executed `trap` (or `brkpt`)."""


@dataclass
class GlobalMemory:
    """The launch's buffers in one flat byte array (an address is an index into it)."""

    data: npt.NDArray[np.uint8]
    starts: npt.NDArray[np.uint64]
    ends: npt.NDArray[np.uint64]

    def check(self, addresses: npt.NDArray[np.uint64], width: int) -> npt.NDArray[np.bool_]:
        """Which of `addresses` (each `width` bytes) lie outside every allocation."""
        if len(self.starts) == 1:
            single: npt.NDArray[np.bool_] = (addresses < self.starts[0]) | (
                addresses + np.uint64(width) > self.ends[0]
            )
            return single
        which = np.searchsorted(self.starts, addresses, side="right").astype(np.int64) - 1
        outside = which < 0
        which[outside] = 0
        return outside | (addresses + np.uint64(width) > self.ends[which])


class GroupState:
    """Registers, special registers, memories and the carry flag of one group of blocks."""

    def __init__(
        self,
        *,
        threads: int,
        registers: list[Value],
        specials: dict[str, Value],
        params: bytes,
        memory: GlobalMemory,
        shared_bytes: int,
        blocks: int,
        local_bytes: int,
        block_threads: int,
    ) -> None:
        self.threads = threads
        self.r = registers
        self.specials = specials
        self.params = params
        self.memory = memory
        self.shared_bytes = shared_bytes
        self.shared = np.zeros(max(blocks * shared_bytes, 16), np.uint8)
        self.local_bytes = local_bytes
        self.local = np.zeros(max(threads * local_bytes, 16), np.uint8) if local_bytes else None
        self.block_threads = block_threads
        lanes = np.arange(threads, dtype=np.int64)
        self.lane_index = lanes
        self.block_of_lane = lanes // block_threads
        self.carry: Value = np.False_
        self.steps = 0

    def full(self, value: Value) -> npt.NDArray[Any]:
        """`value` as an array over every thread."""
        if isinstance(value, np.ndarray) and value.shape == (self.threads,):
            return value
        return np.broadcast_to(np.asarray(value), (self.threads,))

    def locate(
        self,
        space: str,
        addresses: npt.NDArray[np.uint64],
        lanes: npt.NDArray[np.int64],
        width: int,
        alignment: int,
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """The memory and byte offsets of `addresses` (of the threads `lanes`) in `space`.

        Raises:
            Fault: an address outside its space or not aligned to `alignment`.
        """
        misaligned = (addresses & np.uint64(alignment - 1)) != 0
        if misaligned.any():
            first = int(np.argmax(misaligned))
            raise Fault(
                int(lanes[first]),
                int(addresses[first]),
                f"a misaligned address (needs {alignment}-byte alignment)",
            )
        if space == "generic":
            return self._generic(addresses, lanes, width, alignment)
        if space == "global":
            outside = self.memory.check(addresses, width)
            self._raise_outside(outside, addresses, lanes, "outside every allocation")
            return self.memory.data, addresses.astype(np.int64)
        if space == "shared":
            outside = addresses + np.uint64(width) > np.uint64(self.shared_bytes)
            self._raise_outside(
                outside,
                addresses,
                lanes,
                f"outside the block's {self.shared_bytes} bytes of shared memory",
            )
            base = self.block_of_lane[lanes] * self.shared_bytes
            return self.shared, base + addresses.astype(np.int64)
        if space == "local":
            if self.local is None:
                outside = np.ones(addresses.shape, np.bool_)
                self._raise_outside(outside, addresses, lanes, "no local memory is declared")
            outside = addresses + np.uint64(width) > np.uint64(self.local_bytes)
            self._raise_outside(outside, addresses, lanes, "outside the thread's local memory")
            assert self.local is not None
            return self.local, lanes * self.local_bytes + addresses.astype(np.int64)
        raise AssertionError(space)

    def _generic(
        self,
        addresses: npt.NDArray[np.uint64],
        lanes: npt.NDArray[np.int64],
        width: int,
        alignment: int,
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        in_shared = (addresses >= np.uint64(SHARED_WINDOW)) & (
            addresses < np.uint64(SHARED_WINDOW + WINDOW_BYTES)
        )
        in_local = (addresses >= np.uint64(LOCAL_WINDOW)) & (
            addresses < np.uint64(LOCAL_WINDOW + WINDOW_BYTES)
        )
        if not in_shared.any() and not in_local.any():
            return self.locate("global", addresses, lanes, width, alignment)
        if in_shared.all():
            return self.locate(
                "shared", addresses - np.uint64(SHARED_WINDOW), lanes, width, alignment
            )
        if in_local.all():
            return self.locate(
                "local", addresses - np.uint64(LOCAL_WINDOW), lanes, width, alignment
            )
        raise Fault(
            int(lanes[0]),
            int(addresses[0]),
            "one generic access mixing global, shared and local memory",
        )

    @staticmethod
    def _raise_outside(
        outside: npt.NDArray[np.bool_],
        addresses: npt.NDArray[np.uint64],
        lanes: npt.NDArray[np.int64],
        what: str,
    ) -> None:
        if outside.any():
            first = int(np.argmax(outside))
            raise Fault(int(lanes[first]), int(addresses[first]), f"an illegal address ({what})")
