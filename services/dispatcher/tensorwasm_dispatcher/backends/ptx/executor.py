"""The PTX executor: loads PTX (translated once per module, cached by its BLAKE3) and
launches it over the host's memory, groups of thread blocks at a time.

Every failure is an `AbiFailure` with the code a GPU would give: malformed PTX, an entry
the module lacks or an unsupported instruction at load; arguments that do not match the
parameters, geometry and shared memory beyond the limits, an illegal address, a trap or a
launch past its deadline at launch. Nothing is written back to the buffers unless the
launch succeeds.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from tensorwasm_dispatcher.backends.ptx.state import Fault, GlobalMemory, GroupState, TrapError

# Shared memory one block may use (static + dynamic), as on every GPU without opt-in.
MAX_SHARED_BYTES_PER_BLOCK = 48 << 10
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
    """A loaded entry, ready to launch."""

    digest: str
    entry: str
    program: Program


class PtxExecutor:
    """Runs PTX on the host; safe to call from many threads (launches share nothing)."""

    def __init__(
        self, *, cache_entries: int = 128, group_threads: int = DEFAULT_GROUP_THREADS
    ) -> None:
        self._modules: LRUCache[str, Module] = LRUCache(maxsize=cache_entries)
        self._programs: LRUCache[tuple[str, str], Program] = LRUCache(maxsize=cache_entries)
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
            program = self._programs.get((digest, entry))
            if program is not None:
                self.stats.cache_hits += 1
                return PtxKernel(digest, entry, program)
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
        if parsed.shared_static_bytes > MAX_SHARED_BYTES_PER_BLOCK:
            raise AbiFailure(
                AbiError.MALFORMED_PTX,
                f"{entry} declares {parsed.shared_static_bytes} bytes of shared memory, more "
                f"than the {MAX_SHARED_BYTES_PER_BLOCK} a block may use",
            )
        with self._lock:
            self.stats.translations += 1
            self.stats.translate_seconds += time.perf_counter() - started
            self._programs[(digest, entry)] = program
        return PtxKernel(digest, entry, program)

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
        memory, placed = _global_memory(pointers)
        params_bytes = bytearray(params)
        for position, base in placed.items():
            struct.pack_into("<Q", params_bytes, entry.params[position].offset_bytes, base)
        _run_grid(
            kernel.entry,
            program,
            grid,
            block,
            shared_bytes,
            bytes(params_bytes),
            memory,
            deadline,
            self._group_threads,
        )
        changed: set[int] = set()
        if program.writes_global:
            for pointer, start, size in _segments(pointers, placed):
                view = np.frombuffer(pointer.data, np.uint8)
                after = memory.data[start : start + size]
                if not np.array_equal(view, after):
                    view[:] = after
                    changed.add(id(pointer.data))
        return frozenset(p for p, arg in pointers.items() if id(arg.data) in changed)


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


def _segments(
    pointers: dict[int, PointerArg], placed: dict[int, int]
) -> list[tuple[PointerArg, int, int]]:
    """(pointer, flat start of its whole buffer, buffer size), once per distinct buffer."""
    seen: dict[int, tuple[PointerArg, int, int]] = {}
    for position, pointer in pointers.items():
        key = id(pointer.data)
        if key not in seen:
            seen[key] = (pointer, placed[position] - pointer.offset_bytes, len(pointer.data))
    return list(seen.values())


def _global_memory(pointers: dict[int, PointerArg]) -> tuple[GlobalMemory, dict[int, int]]:
    """The flat memory holding every buffer the pointers reach, and each pointer's address."""
    bases: dict[int, int] = {}
    placed: dict[int, int] = {}
    cursor = _FIRST_ADDRESS
    layout: list[tuple[bytearray, int]] = []
    for position, pointer in pointers.items():
        key = id(pointer.data)
        if key not in bases:
            misalignment = (pointer.guest_offset - pointer.offset_bytes) % 256
            base = -(-cursor // 4096) * 4096 + misalignment
            bases[key] = base
            layout.append((pointer.data, base))
            cursor = base + len(pointer.data) + _GUARD_BYTES
        placed[position] = bases[key] + pointer.offset_bytes
    data = np.zeros(-(-cursor // 16) * 16, np.uint8)
    starts, ends = [], []
    for buffer, base in sorted(layout, key=lambda item: item[1]):
        data[base : base + len(buffer)] = np.frombuffer(buffer, np.uint8)
        starts.append(base)
        ends.append(base + len(buffer))
    if not starts:  # no buffers: every address faults
        starts, ends = [0], [0]
    return (
        GlobalMemory(data, np.array(starts, np.uint64), np.array(ends, np.uint64)),
        placed,
    )


def _specials(
    program: Program, grid: Dim3, block: Dim3, first_block: int, blocks: int
) -> dict[str, Any]:
    threads_per_block = block[0] * block[1] * block[2]
    lanes = np.arange(blocks * threads_per_block, dtype=np.int64)
    local = lanes % threads_per_block
    block_ids = first_block + lanes // threads_per_block
    u32 = np.uint32
    specials: dict[str, Any] = {
        "%tid.x": (local % block[0]).astype(u32),
        "%tid.y": ((local // block[0]) % block[1]).astype(u32),
        "%tid.z": (local // (block[0] * block[1])).astype(u32),
        "%ctaid.x": (block_ids % grid[0]).astype(u32),
        "%ctaid.y": ((block_ids // grid[0]) % grid[1]).astype(u32),
        "%ctaid.z": (block_ids // (grid[0] * grid[1])).astype(u32),
        "%laneid": (local % 32).astype(u32),
        "%warpid": (local // 32).astype(u32),
        "%nwarpid": u32(-(-threads_per_block // 32)),
        "%smid": u32(0), "%nsmid": u32(1), "%gridid": u32(0),
        "%clock": u32(time.perf_counter_ns() & 0xFFFFFFFF),
        "%clock64": np.uint64(time.perf_counter_ns()),
        "%globaltimer": np.uint64(time.time_ns()),
    }  # fmt: skip
    for axis, count in zip("xyz", block, strict=True):
        specials[f"%ntid.{axis}"] = u32(count)
    for axis, count in zip("xyz", grid, strict=True):
        specials[f"%nctaid.{axis}"] = u32(count)
    lane = specials["%laneid"].astype(np.uint64)
    one = np.uint64(1)
    specials["%lanemask_eq"] = (one << lane).astype(u32)
    specials["%lanemask_lt"] = ((one << lane) - one).astype(u32)
    specials["%lanemask_le"] = ((one << (lane + one)) - one).astype(u32)
    specials["%lanemask_gt"] = (~((one << (lane + one)) - one)).astype(u32)
    specials["%lanemask_ge"] = (~((one << lane) - one)).astype(u32)
    if (first_block // grid[0]) == ((first_block + blocks - 1) // grid[0]):
        # One row of the grid: the y and z block indices are the same for every thread.
        specials["%ctaid.y"] = u32((first_block // grid[0]) % grid[1])
        specials["%ctaid.z"] = u32(first_block // (grid[0] * grid[1]))
    if block[1] == 1 and block[2] == 1:
        specials["%tid.y"] = u32(0)
        specials["%tid.z"] = u32(0)
    return specials


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
    first = 0
    while first < total_blocks:
        blocks = min(per_group, total_blocks - first)
        state = GroupState(
            threads=blocks * threads_per_block,
            registers=list(registers),
            specials=_specials(program, grid, block, first, blocks),
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
