"""The PTX executor: loads PTX (translated once per module, cached by its BLAKE3) and
launches it over the host's memory, groups of thread blocks at a time.

Every failure is an `AbiFailure` with the code a GPU would give: malformed PTX, an entry
the module lacks or an unsupported instruction at load; arguments that do not match the
parameters, geometry and shared memory beyond the limits, an illegal address, a trap or a
launch past its deadline at launch. Kernels read and write the buffers in place: a launch
that fails may have written part of what it would have (as on a GPU).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cachetools import LRUCache
from tensorwasm_common.digests import blake3_hex
from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, Dim3, ScalarArg

from tensorwasm_dispatcher.backends.ptx.parser import (
    Module,
    PtxSyntaxError,
    PtxUnsupportedError,
    parse_module,
)
from tensorwasm_dispatcher.backends.ptx.program import (
    DeadlineError,
    Program,
    run_group,
    translate,
)
from tensorwasm_dispatcher.backends.ptx.state import (
    MODULE_BASE,
    Affine,
    Fault,
    GlobalMemory,
    GroupState,
    TrapError,
)

# Shared memory one block may use (static + dynamic), as on every GPU without opt-in.
MAX_SHARED_BYTES_PER_BLOCK = 48 << 10
# Local memory one thread may use (CUDA's limit).
MAX_LOCAL_BYTES_PER_THREAD = 512 << 10
# Threads run together in one group (registers are arrays this long); whole blocks only.
DEFAULT_GROUP_THREADS = 1 << 16
_LOCAL_BYTES_PER_GROUP = 64 << 20
_GUARD_BYTES = 256
_INT32_TAGS = frozenset({ArgTag.I32, ArgTag.U32})
_INT64_TAGS = frozenset({ArgTag.I64, ArgTag.U64})
# The argv tags a parameter of each PTX type takes (the bit types take any of their width).
_TAGS = {
    "u32": _INT32_TAGS, "s32": _INT32_TAGS, "f32": frozenset({ArgTag.F32}),
    "u64": _INT64_TAGS, "s64": _INT64_TAGS, "f64": frozenset({ArgTag.F64}),
}  # fmt: skip
_FIRST_ADDRESS = 1 << 16  # nothing lives below: a null pointer faults


@dataclass(frozen=True)
class PointerArg:
    """A pointer argument: bytes of a host buffer, from `offset_bytes` on.

    `guest_offset` is the address the guest knows the range by; the executor keeps its
    alignment (mod 256) so that the kernel sees the alignment it would on the device.
    """

    data: bytearray
    offset_bytes: int
    guest_offset: int


@dataclass
class ExecutorStats:
    """Translations done and served from the cache (for the benchmark and the logs)."""

    translations: int = 0
    cache_hits: int = 0
    translate_seconds: float = 0.0


@dataclass(frozen=True)
class PtxKernel:
    """A loaded entry, ready to launch, with its module's `.global`/`.const` variables
    (their own copy per load: they keep their values from launch to launch)."""

    digest: str
    entry: str
    program: Program
    module_globals: bytearray = field(repr=False, default_factory=bytearray)


class PtxExecutor:
    """Runs PTX on the host; safe to call from many threads (launches share nothing)."""

    def __init__(
        self, *, cache_entries: int = 128, group_threads: int = DEFAULT_GROUP_THREADS
    ) -> None:
        self._modules: LRUCache[str, Module] = LRUCache(maxsize=cache_entries)
        self._programs: LRUCache[tuple[str, str], tuple[Program, bytes]] = LRUCache(
            maxsize=cache_entries
        )
        self._lock = threading.Lock()
        self._group_threads = group_threads
        self.stats = ExecutorStats()

    def load(self, ptx: bytes, entry: str) -> PtxKernel:
        """Parses and translates `entry` of `ptx` (or finds it in the cache).

        Raises:
            AbiFailure: MALFORMED_PTX (not PTX, no such entry, too much shared memory),
                NOT_AVAILABLE (an instruction or declaration the executor does not run).
        """
        digest = blake3_hex(ptx)
        with self._lock:
            cached = self._programs.get((digest, entry))
            if cached is not None:
                self.stats.cache_hits += 1
                return PtxKernel(digest, entry, cached[0], bytearray(cached[1]))
        started = time.perf_counter()
        try:
            module = self._module(digest, ptx)
            parsed = module.entries.get(entry)
            if parsed is None:
                names = ", ".join(sorted(module.entries)) or "none"
                raise AbiFailure(
                    AbiError.MALFORMED_PTX,
                    f"no kernel {entry!r} in the PTX (its entries: {names})",
                )
            program = translate(parsed)
        except PtxSyntaxError as exc:
            raise AbiFailure(AbiError.MALFORMED_PTX, f"malformed PTX: {exc}") from None
        except PtxUnsupportedError as exc:
            raise AbiFailure(
                AbiError.NOT_AVAILABLE, f"the cpu PTX executor does not support {exc}"
            ) from None
        if parsed.local_bytes > MAX_LOCAL_BYTES_PER_THREAD:
            raise AbiFailure(
                AbiError.MALFORMED_PTX,
                f"{entry} declares {parsed.local_bytes} bytes of local memory per thread, more "
                f"than the {MAX_LOCAL_BYTES_PER_THREAD} a thread may use",
            )
        if parsed.shared_static_bytes > MAX_SHARED_BYTES_PER_BLOCK:
            raise AbiFailure(
                AbiError.MALFORMED_PTX,
                f"{entry} declares {parsed.shared_static_bytes} bytes of shared memory, more "
                f"than the {MAX_SHARED_BYTES_PER_BLOCK} a block may use",
            )
        with self._lock:
            self.stats.translations += 1
            self.stats.translate_seconds += time.perf_counter() - started
            self._programs[(digest, entry)] = (program, bytes(module.globals_image))
        return PtxKernel(digest, entry, program, bytearray(module.globals_image))

    def _module(self, digest: str, ptx: bytes) -> Module:
        with self._lock:
            module = self._modules.get(digest)
        if module is None:
            try:
                text = ptx.rstrip(b"\0").decode("utf-8")
            except UnicodeDecodeError:
                raise PtxSyntaxError("the PTX is not UTF-8 text") from None
            module = parse_module(text)
            with self._lock:
                self._modules[digest] = module
        return module

    def launch(
        self,
        kernel: PtxKernel,
        *,
        grid: Dim3,
        block: Dim3,
        shared_mem_bytes: int,
        args: Sequence[ScalarArg | PointerArg],
        deadline: float,
    ) -> frozenset[int]:
        """Runs the kernel over the whole grid; returns the positions of the pointer
        arguments whose buffers it changed (they now hold what it wrote).

        Raises:
            AbiFailure: INVALID_ARGS, KERNEL_ARGS_UNSUPPORTED, LAUNCH_FAILED (an illegal
                address, a trap, shared memory beyond the limit, past `deadline`).
        """
        program = kernel.program
        entry = program.entry
        shared_bytes = -(-entry.shared_static_bytes // 16) * 16 + shared_mem_bytes
        if shared_bytes > MAX_SHARED_BYTES_PER_BLOCK:
            raise AbiFailure(
                AbiError.LAUNCH_FAILED,
                f"{kernel.entry}: {entry.shared_static_bytes} bytes of static and "
                f"{shared_mem_bytes} of dynamic shared memory, more than the "
                f"{MAX_SHARED_BYTES_PER_BLOCK} a block may use",
            )
        params, pointers = _bind(kernel.entry, program, args)
        memory, placed = _global_memory(pointers, kernel.module_globals)
        params_bytes = bytearray(params)
        for position, base in placed.items():
            struct.pack_into("<Q", params_bytes, entry.params[position].offset_bytes, base)
        try:
            _run_grid(kernel.entry, program, grid, block, shared_bytes, bytes(params_bytes),
                      memory, deadline, self._group_threads)  # fmt: skip
        except MemoryError:
            raise AbiFailure(
                AbiError.LAUNCH_FAILED,
                f"{kernel.entry}: the launch needs more host memory than the cpu backend has",
            ) from None
        written = {id(memory.buffers[segment]) for segment in memory.written}
        return frozenset(p for p, arg in pointers.items() if id(arg.data) in written)


def _bind(
    entry_name: str, program: Program, args: Sequence[ScalarArg | PointerArg]
) -> tuple[bytes, dict[int, PointerArg]]:
    params = program.entry.params
    if len(args) != len(params):
        raise AbiFailure(
            AbiError.INVALID_ARGS,
            f"{entry_name} declares {len(params)} parameters of "
            f"{[p.size_bytes for p in params]} bytes; the argv has {len(args)}",
        )
    size = max((p.offset_bytes + p.size_bytes for p in params), default=0)
    block = bytearray(size)
    pointers: dict[int, PointerArg] = {}
    for position, (param, arg) in enumerate(zip(params, args, strict=True)):
        where = f"{entry_name} parameter {position} ({param.name}, {param.size_bytes} bytes)"
        if param.size_bytes not in (1, 2, 4, 8):
            raise AbiFailure(
                AbiError.KERNEL_ARGS_UNSUPPORTED,
                f"{where}: a parameter passed by value (a struct or array) has no argv record",
            )
        if isinstance(arg, PointerArg):
            if param.size_bytes != 8:
                raise AbiFailure(AbiError.INVALID_ARGS, f"{where} takes a scalar, got a pointer")
            pointers[position] = arg
            continue
        if arg.tag not in _TAGS.get(param.type_name, frozenset(ArgTag)) or (
            arg.tag.value_bytes != param.size_bytes
        ):
            raise AbiFailure(
                AbiError.INVALID_ARGS,
                f"{where} takes {param.size_bytes} bytes, got {arg.tag.name.lower()} "
                f"({arg.tag.value_bytes} bytes)",
            )
        bits = arg.value & ((1 << (8 * param.size_bytes)) - 1)
        block[param.offset_bytes : param.offset_bytes + param.size_bytes] = bits.to_bytes(
            param.size_bytes, "little"
        )
    return bytes(block), pointers


def _global_memory(
    pointers: dict[int, PointerArg], module_globals: bytearray
) -> tuple[GlobalMemory, dict[int, int]]:
    """The buffers the pointers reach, each at its own base, the module's variables at
    `MODULE_BASE`, and each pointer's address."""
    bases: dict[int, int] = {}
    placed: dict[int, int] = {}
    cursor = _FIRST_ADDRESS
    buffers: list[tuple[int, bytearray]] = []
    if module_globals:
        buffers.append((MODULE_BASE, module_globals))
    for position, pointer in pointers.items():
        key = id(pointer.data)
        if key not in bases:
            misalignment = (pointer.guest_offset - pointer.offset_bytes) % 256
            base = -(-cursor // 4096) * 4096 + misalignment
            bases[key] = base
            buffers.append((base, pointer.data))
            cursor = base + len(pointer.data) + _GUARD_BYTES
        placed[position] = bases[key] + pointer.offset_bytes
    return GlobalMemory(buffers), placed


class _Geometry:
    """Per-thread index arrays of a full group of blocks, shared by every group."""

    def __init__(self, grid: Dim3, block: Dim3, blocks_per_group: int) -> None:
        self.grid, self.block = grid, block
        self.threads_per_block = block[0] * block[1] * block[2]
        lanes = np.arange(blocks_per_group * self.threads_per_block, dtype=np.uint32)
        per_block = np.uint32(self.threads_per_block)
        self.local = lanes % per_block if blocks_per_group > 1 else lanes
        self.block_in_group = lanes // per_block
        self._cache: dict[str, Any] = {}

    def tid(self, key: str) -> Any:
        """A thread-index register (%tid.*, %laneid, %warpid) over a full group."""
        if key not in self._cache:
            local = self.local
            bx, by = np.uint32(self.block[0]), np.uint32(self.block[1])
            if key == "%tid.x":
                value = local % bx if self.block[0] != self.threads_per_block else local
            elif key == "%tid.y":
                value = (local // bx) % by
            elif key == "%tid.z":
                value = local // (bx * by)
            elif key == "%laneid":
                value = local & np.uint32(31)
            else:
                value = local >> np.uint32(5)
            self._cache[key] = value
        return self._cache[key]


class _Specials(dict[str, Any]):
    """The special registers of one group, each computed the first time it is read."""

    def __init__(self, geometry: _Geometry, first_block: int, blocks: int) -> None:
        super().__init__()
        self.geometry = geometry
        self.first_block = first_block
        self.threads = blocks * geometry.threads_per_block
        grid = geometry.grid
        if grid[0] * grid[1] * grid[2] > 2**32 - 1:  # pragma: no cover - refused earlier
            raise AssertionError(grid)

    def __missing__(self, key: str) -> Any:
        value = self._compute(key)
        self[key] = value
        return value

    def _compute(self, key: str) -> Any:  # noqa: PLR0911 - one branch per register
        geometry, u32 = self.geometry, np.uint32
        grid, block = geometry.grid, geometry.block
        threads = self.threads
        blocks = threads // geometry.threads_per_block
        if key == "%tid.x" and block[1] == block[2] == 1:
            index = Affine.make(0, 0, 1, np.dtype(u32), blocks, geometry.threads_per_block)
            return index if index is not None else geometry.tid(key)[:threads]
        if key in ("%tid.x", "%tid.y", "%tid.z", "%laneid", "%warpid"):
            if (key == "%tid.y" and block[1] == 1) or (key == "%tid.z" and block[2] == 1):
                return u32(0)
            return geometry.tid(key)[:threads]
        if key.startswith("%ctaid."):
            axis = "xyz".index(key[-1])
            if grid[axis] == 1:
                return u32(0)
            in_group = geometry.block_in_group[:threads]
            last = self.first_block + threads // geometry.threads_per_block
            if axis == 0 and last <= grid[0]:  # the group lies in one row of the grid
                row = Affine.make(self.first_block, 1, 0, np.dtype(u32), blocks,
                                  geometry.threads_per_block)  # fmt: skip
                if row is not None:
                    return row
            block_ids = np.uint64(self.first_block) + in_group
            if axis == 0:
                return (block_ids % np.uint64(grid[0])).astype(u32)
            if axis == 1:
                return ((block_ids // np.uint64(grid[0])) % np.uint64(grid[1])).astype(u32)
            return (block_ids // np.uint64(grid[0] * grid[1])).astype(u32)
        if key.startswith("%ntid."):
            return u32(block["xyz".index(key[-1])])
        if key.startswith("%nctaid."):
            return u32(grid["xyz".index(key[-1])])
        if key.startswith("%lanemask_"):
            lane = self["%laneid"].astype(np.uint64)
            one = np.uint64(1)
            masks = {
                "eq": lambda: one << lane,
                "lt": lambda: (one << lane) - one,
                "le": lambda: (one << (lane + one)) - one,
                "gt": lambda: ~((one << (lane + one)) - one),
                "ge": lambda: ~((one << lane) - one),
            }
            return masks[key.removeprefix("%lanemask_")]().astype(u32)
        constants = {
            "%nwarpid": u32(-(-geometry.threads_per_block // 32)),
            "%smid": u32(0), "%nsmid": u32(1), "%gridid": u32(0),
            "%clock": u32(time.perf_counter_ns() & 0xFFFFFFFF),
            "%clock64": np.uint64(time.perf_counter_ns()),
            "%globaltimer": np.uint64(time.time_ns()),
        }  # fmt: skip
        return constants[key]


def _run_grid(  # noqa: PLR0917 - one branch per instruction form
    entry_name: str,
    program: Program,
    grid: Dim3,
    block: Dim3,
    shared_bytes: int,
    params: bytes,
    memory: GlobalMemory,
    deadline: float,
    group_threads: int,
) -> None:
    threads_per_block = block[0] * block[1] * block[2]
    total_blocks = grid[0] * grid[1] * grid[2]
    local_bytes = program.entry.local_bytes
    per_group = max(1, group_threads // threads_per_block)
    if local_bytes:
        per_group = max(
            1, min(per_group, _LOCAL_BYTES_PER_GROUP // (local_bytes * threads_per_block))
        )
    registers = [np.zeros((), register.dtype)[()] for register in program.entry.registers]
    geometry = _Geometry(grid, block, min(per_group, total_blocks))
    first = 0
    while first < total_blocks:
        blocks = min(per_group, total_blocks - first)
        state = GroupState(
            threads=blocks * threads_per_block,
            registers=list(registers),
            specials=_Specials(geometry, first, blocks),
            params=params,
            memory=memory,
            shared_bytes=shared_bytes,
            blocks=blocks,
            local_bytes=local_bytes,
            block_threads=threads_per_block,
        )
        try:
            with np.errstate(all="ignore"):
                run_group(program, state, deadline)
        except Fault as fault:
            raise AbiFailure(
                AbiError.LAUNCH_FAILED, _fault_message(entry_name, fault, grid, block, first)
            ) from None
        except TrapError as trap:
            raise AbiFailure(AbiError.LAUNCH_FAILED, f"{entry_name} executed `{trap}`") from None
        except DeadlineError:
            raise AbiFailure(
                AbiError.LAUNCH_FAILED,
                f"{entry_name} ran past its deadline and was stopped "
                f"({first} of {total_blocks} blocks finished)",
            ) from None
        first += blocks


def _fault_message(entry_name: str, fault: Fault, grid: Dim3, block: Dim3, first_block: int) -> str:
    threads_per_block = block[0] * block[1] * block[2]
    block_id = first_block + fault.lane // threads_per_block
    local = fault.lane % threads_per_block
    thread = (local % block[0], (local // block[0]) % block[1], local // (block[0] * block[1]))
    where = (block_id % grid[0], (block_id // grid[0]) % grid[1], block_id // (grid[0] * grid[1]))
    instruction = getattr(fault, "instruction", None)
    text = (
        f"`{instruction.text}` (line {instruction.line})"
        if instruction is not None
        else "an access"
    )
    return (
        f"{entry_name}: {fault.what} at 0x{fault.address:x}: {text} in thread {thread} of "
        f"block {where}"
    )
