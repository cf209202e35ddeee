"""The state of a group of thread blocks being executed together, and their memory.

Every register holds one value per thread: a NumPy array over the group's threads, or a
NumPy scalar while all threads agree (parameters, constants, uniform loop counters), which
saves both memory and time. Global memory is one flat byte array holding the launch's
buffers (each at its own base with a guard gap, so running past one faults); shared memory
is one row per block, local memory one row per thread.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

Value = Any  # a NumPy array over the threads, or a NumPy scalar
Mask = npt.NDArray[np.bool_] | None  # the threads an instruction runs for (None: all)

# Generic addresses of the shared and local windows (cvta.shared / cvta.local).
SHARED_WINDOW = 1 << 48
LOCAL_WINDOW = 2 << 48
WINDOW_BYTES = 1 << 32
# Where a module's `.global`/`.const` variables live (far above any launch's buffers).
MODULE_BASE = 1 << 40


class Affine:
    """Integers that are affine in the thread: `start + block_step * (lane // block_threads)
    + thread_step * (lane % block_threads)` for each thread `lane` of the group, all within
    `dtype`'s range (so no wrap-around happened). Thread and block indices and the
    addresses computed from them stay in this form, so their arithmetic costs nothing per
    thread and a load or store at consecutive addresses is a slice."""

    __slots__ = ("_dense", "block_step", "block_threads", "blocks", "dtype", "high", "low",
                 "start", "thread_step")  # fmt: skip

    def __init__(  # noqa: PLR0917 - the coefficients and the group's shape
        self, start: int, block_step: int, thread_step: int, dtype: np.dtype[Any],
        blocks: int, block_threads: int,
    ) -> None:  # fmt: skip
        self.start, self.block_step, self.thread_step = start, block_step, thread_step
        self.dtype, self.blocks, self.block_threads = dtype, blocks, block_threads
        self.low = (
            start + min(0, block_step) * (blocks - 1) + min(0, thread_step) * (block_threads - 1)
        )
        self.high = (
            start + max(0, block_step) * (blocks - 1) + max(0, thread_step) * (block_threads - 1)
        )
        self._dense: npt.NDArray[Any] | None = None

    @staticmethod
    def make(  # noqa: PLR0917 - the coefficients and the group's shape
        start: int, block_step: int, thread_step: int, dtype: np.dtype[Any],
        blocks: int, block_threads: int,
    ) -> Affine | None:  # fmt: skip
        """The affine value, or None if some thread's value falls outside `dtype`."""
        if dtype.kind not in "iu":
            return None
        value = Affine(start, block_step, thread_step, dtype, blocks, block_threads)
        info = np.iinfo(dtype)
        bound = 2**62  # the dense form is computed in int64
        if value.low < max(info.min, -bound) or value.high > min(info.max, bound):
            return None
        return value

    def cast(self, dtype: np.dtype[Any]) -> Affine | None:
        """The same values held as `dtype`, if they all fit."""
        if dtype == self.dtype:
            return self
        return Affine.make(self.start, self.block_step, self.thread_step, dtype, self.blocks,
                           self.block_threads)  # fmt: skip

    @property
    def contiguous_step(self) -> int | None:
        """The step between consecutive threads' values, if it is the same across blocks."""
        if self.block_step == self.thread_step * self.block_threads:
            return self.thread_step
        return None

    def dense(self) -> npt.NDArray[Any]:
        """One value per thread (computed once)."""
        if self._dense is None:
            lanes = np.arange(self.blocks * self.block_threads, dtype=np.int64)
            step = self.contiguous_step
            if step is not None:
                values = self.start + step * lanes
            else:
                per_block = self.block_threads
                values = (
                    self.start
                    + self.block_step * (lanes // per_block)
                    + self.thread_step * (lanes % per_block)
                )
            self._dense = values.astype(self.dtype)
        return self._dense


def dense(value: Value) -> Value:
    """`value` as a NumPy array or scalar (an affine value expanded)."""
    return value.dense() if isinstance(value, Affine) else value


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


# One typed piece of an access: the typed memory, the element indices, and which of the
# access's threads they serve (None: all of them, in order).
Piece = tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64] | None]


class GlobalMemory:
    """The launch's buffers, each at its own base address, read and written in place.

    An address is `base + offset` of one buffer; buffers are apart by guard gaps, so an
    access past one's end faults instead of reaching the next.
    """

    def __init__(self, buffers: list[tuple[int, bytearray]]) -> None:
        ordered = sorted(buffers, key=lambda item: item[0])
        self.buffers = [data for _, data in ordered]
        self.starts = np.array([base for base, _ in ordered] or [0], np.uint64)
        self.ends = np.array([base + len(data) for base, data in ordered] or [0], np.uint64)
        self.written: set[int] = set()
        self._views: dict[tuple[int, str], tuple[npt.NDArray[Any], int]] = {}

    def _view(self, segment: int, dtype: np.dtype[Any]) -> tuple[npt.NDArray[Any], int]:
        """A typed view of a buffer, and the base address of its first element."""
        key = (segment, dtype.str)
        found = self._views.get(key)
        if found is None:
            data = self.buffers[segment]
            base = int(self.starts[segment])
            skip = (-base) % dtype.itemsize  # the view starts on an aligned address
            count = max(0, (len(data) - skip) // dtype.itemsize)
            view = (
                np.frombuffer(data, dtype, count=count, offset=skip)
                if count
                else np.empty(0, dtype)
            )
            found = (view, base + skip)
            self._views[key] = found
        return found

    def contiguous(  # noqa: PLR0917 - the parts of one access
        self, start: int, step: int, count: int, dtype: np.dtype[Any], vector: int, writing: bool
    ) -> tuple[npt.NDArray[Any], int, int] | None:
        """(typed view, first element, element step) of `count` accesses of `vector`
        elements at `start`, `start + step`, ...: when all are aligned and in one buffer
        (else None: the caller takes the general path, which reports any fault)."""
        width = dtype.itemsize * vector
        last = start + step * (count - 1)
        if step <= 0 or step % dtype.itemsize or start % width or (step % width and vector > 1):
            return None
        segment = int(np.searchsorted(self.starts, np.uint64(start), side="right")) - 1
        if (
            segment < 0
            or start < int(self.starts[segment])
            or last + width > int(self.ends[segment])
        ):
            return None
        view, base = self._view(segment, dtype)
        if (start - base) % dtype.itemsize:
            return None
        if writing:
            self.written.add(segment)
        return view, (start - base) // dtype.itemsize, step // dtype.itemsize

    def pieces(
        self, addresses: npt.NDArray[np.uint64], width: int, dtype: np.dtype[Any], writing: bool
    ) -> list[Piece] | int:
        """The typed pieces of an access, or the position of its first illegal address."""
        lowest, highest = addresses.min(), addresses.max()
        segment = int(np.searchsorted(self.starts, lowest, side="right")) - 1
        shift = np.uint64(dtype.itemsize.bit_length() - 1)
        if segment >= 0 and highest + np.uint64(width) <= self.ends[segment]:
            view, base = self._view(segment, dtype)
            if writing:
                self.written.add(segment)
            index = ((addresses - np.uint64(base)) >> shift).view(np.int64)
            return [(view, index, None)]
        which = np.searchsorted(self.starts, addresses, side="right").astype(np.int64) - 1
        outside = which < 0
        which[outside] = 0
        outside |= addresses + np.uint64(width) > self.ends[which]
        if outside.any():
            return int(np.argmax(outside))
        result: list[Piece] = []
        for segment in np.unique(which).tolist():
            selection = np.flatnonzero(which == segment)
            view, base = self._view(segment, dtype)
            if writing:
                self.written.add(segment)
            index = ((addresses[selection] - np.uint64(base)) >> shift).view(np.int64)
            result.append((view, index, selection))
        return result


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
        self.carry: Value = np.False_
        self.steps = 0

    @functools.cached_property
    def lane_index(self) -> npt.NDArray[np.int64]:
        """Each thread's index in the group."""
        return np.arange(self.threads, dtype=np.int64)

    @functools.cached_property
    def block_of_lane(self) -> npt.NDArray[np.int64]:
        """Each thread's block, counted within the group."""
        return self.lane_index // self.block_threads

    @functools.cached_property
    def shared_row_base(self) -> npt.NDArray[np.uint64]:
        """Where each thread's block's shared memory starts in the group's shared array."""
        return self.block_of_lane.astype(np.uint64) * np.uint64(self.shared_bytes)

    def full(self, value: Value) -> npt.NDArray[Any]:
        """`value` as an array over every thread."""
        if isinstance(value, Affine):
            return value.dense()
        if isinstance(value, np.ndarray) and value.shape == (self.threads,):
            return value
        return np.broadcast_to(np.asarray(value), (self.threads,))

    def locate(  # noqa: PLR0917 - the parts of one access
        self,
        space: str,
        addresses: npt.NDArray[np.uint64],
        lanes: npt.NDArray[np.int64] | None,
        dtype: np.dtype[Any],
        vector: int = 1,
        writing: bool = False,
    ) -> list[Piece]:
        """The typed pieces of an access of `vector` elements of `dtype` at `addresses` (by
        the threads `lanes`; None: every thread) in `space`.

        Raises:
            Fault: an address outside its space or not aligned to the access's size.
        """
        width = dtype.itemsize * vector
        low_bits = np.uint64(width - 1)
        # One pass: a low bit set in any address is set in their OR.
        if addresses.size and np.bitwise_or.reduce(addresses) & low_bits:
            misaligned = (addresses & low_bits) != 0
            first = int(np.argmax(misaligned))
            raise Fault(self._lane(lanes, first), int(addresses[first]),
                        f"a misaligned address (needs {width}-byte alignment)")  # fmt: skip
        if space == "generic":
            return self._generic(addresses, lanes, dtype, vector, writing)
        if space == "global":
            found = self.memory.pieces(addresses, width, dtype, writing)
            if isinstance(found, int):
                raise Fault(self._lane(lanes, found), int(addresses[found]),
                            "an illegal address (outside every allocation)")  # fmt: skip
            return found
        shift = np.uint64(dtype.itemsize.bit_length() - 1)
        if space == "shared":
            limit = self.shared_bytes
            what = f"the block's {self.shared_bytes} bytes of shared memory"
            memory = self.shared
            rows = self.shared_row_base if lanes is None else self.shared_row_base[lanes]
        else:
            limit, what = self.local_bytes, "the thread's local memory"
            memory = self.local if self.local is not None else np.zeros(16, np.uint8)
            lane_numbers = self.lane_index if lanes is None else lanes
            rows = lane_numbers.astype(np.uint64) * np.uint64(limit)
        if addresses.size and addresses.max() + np.uint64(width) > np.uint64(limit):
            outside = addresses + np.uint64(width) > np.uint64(limit)
            first = int(np.argmax(outside))
            raise Fault(self._lane(lanes, first), int(addresses[first]),
                        f"an illegal address (outside {what})")  # fmt: skip
        offsets = rows + addresses
        return [(memory.view(dtype), (offsets >> shift).view(np.int64), None)]

    @staticmethod
    def _lane(lanes: npt.NDArray[np.int64] | None, position: int) -> int:
        return position if lanes is None else int(lanes[position])

    def _generic(
        self,
        addresses: npt.NDArray[np.uint64],
        lanes: npt.NDArray[np.int64] | None,
        dtype: np.dtype[Any],
        vector: int,
        writing: bool,
    ) -> list[Piece]:
        """A generic access: each thread's address is in the shared window, the local
        window or global memory; threads in different spaces get a piece each."""
        spaces: list[tuple[str, npt.NDArray[np.bool_], int]] = []
        claimed = np.zeros(addresses.shape, np.bool_)
        for space, window in (("shared", SHARED_WINDOW), ("local", LOCAL_WINDOW)):
            inside = (addresses >= np.uint64(window)) & (
                addresses < np.uint64(window + WINDOW_BYTES)
            )
            if inside.any():
                spaces.append((space, inside, window))
                claimed |= inside
        if not spaces:
            return self.locate("global", addresses, lanes, dtype, vector, writing)
        if not claimed.all():
            spaces.append(("global", ~claimed, 0))
        if len(spaces) == 1:
            space, _, window = spaces[0]
            return self.locate(space, addresses - np.uint64(window), lanes, dtype, vector, writing)
        pieces: list[Piece] = []
        for space, inside, window in spaces:
            chosen = np.flatnonzero(inside)
            sub_lanes = chosen if lanes is None else lanes[chosen]
            within = addresses[chosen] - np.uint64(window)
            for view, index, selection in self.locate(space, within, sub_lanes, dtype, vector,
                                                      writing):  # fmt: skip
                pieces.append((view, index, chosen if selection is None else chosen[selection]))
        return pieces
