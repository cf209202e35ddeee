"""CudaSession on its own: validation order, batching, copy-back, deferred errors, retries.

The transport here is a stand-in that records each request and answers like the cpu
dispatcher does for vector_add (c = a + b); the real path is in tests/integration.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import MAX_PTX_BYTES, AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, BatchResult, CommandResult, LaunchKernel, LoadKernel
from tensorwasm_executor.gpu.abi import PointerRecord
from tensorwasm_executor.gpu.batch import TransportError, build_request, merge_ranges
from tensorwasm_executor.gpu.cuda_session import CudaSession

PTX = b".version 7.8\n.target sm_80\n.visible .entry vector_add(\n)\n{\n}\n"
PTX_AT, ENTRY_AT, ARGV_AT, A, B, C = 4096, 0, 64, 1024, 1280, 1536


class Memory:
    """Linear memory as a bytearray."""

    def __init__(self, size: int = 65536) -> None:
        self.data = bytearray(size)
        self.data[ENTRY_AT : ENTRY_AT + 10] = b"vector_add"
        self.data[PTX_AT : PTX_AT + len(PTX)] = PTX
        self.writes: list[tuple[int, int]] = []

    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, length: int) -> bytes:
        assert start + length <= len(self.data)
        return bytes(self.data[start : start + length])

    def write(self, start: int, data: bytes) -> None:
        assert start + len(data) <= len(self.data)
        self.data[start : start + len(data)] = data
        self.writes.append((start, len(data)))

    def f32(self, at: int, count: int = 64) -> np.ndarray:
        return np.frombuffer(bytes(self.data[at : at + 4 * count]), dtype="<f4")


class Dispatcher:
    """Answers batches as the cpu backend would for vector_add; records every request."""

    def __init__(self) -> None:
        self.requests: list[Batch] = []
        self.timeouts: list[float] = []
        self.fail_launches: dict[int, CommandResult] = {}  # launch index -> result
        self.errors: list[TransportError] = []  # raised (in order) before answering
        self.launches = 0

    def execute(self, request: Batch, timeout_seconds: float) -> BatchResult:
        self.requests.append(request)
        self.timeouts.append(timeout_seconds)
        if self.errors:
            raise self.errors.pop(0)
        buffers = {r.buffer_id: bytearray(r.data) for r in request.regions}
        written: set[int] = set()
        results = []
        for command in request.commands:
            if isinstance(command, LoadKernel):
                results.append(CommandResult(0))
                continue
            index, self.launches = self.launches, self.launches + 1
            if index in self.fail_launches:
                results.append(self.fail_launches[index])
                continue
            a, b, c, n = command.args
            assert isinstance(a, BufferRef) and isinstance(b, BufferRef)
            assert isinstance(c, BufferRef) and isinstance(n, ScalarArg)

            def view(ref: BufferRef) -> np.ndarray:
                raw = buffers[ref.buffer_id]
                return np.frombuffer(raw, dtype="<f4", count=ref.length_bytes // 4,
                                     offset=ref.offset_bytes)  # fmt: skip

            out = view(c)
            out[: n.value] = view(a)[: n.value] + view(b)[: n.value]
            written.add(c.buffer_id)
            results.append(CommandResult(0))
        back = {i: bytes(buffers[i]) for i in written if request.regions[i].copy_back}
        return BatchResult(tuple(results), back)


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher()


@pytest.fixture
def memory() -> Memory:
    memory = Memory()
    a = np.arange(64, dtype=np.float32)
    memory.data[A : A + 256] = a.tobytes()
    memory.data[B : B + 256] = (a * 2 + 0.5).astype(np.float32).tobytes()
    memory.data[C : C + 256] = np.full(64, -1, np.float32).tobytes()
    return memory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_session(dispatcher: Dispatcher, clock: Clock | None = None, **caps: int) -> CudaSession:
    clock = clock or Clock()
    session = CudaSession(dispatcher, clock=clock, sleep=clock.sleep, **caps)
    session.begin_call(clock() + 10.0)
    return session


def argv(memory: Memory, a: int = A, b: int = B, c: int = C, n: int = 64, at: int = ARGV_AT) -> int:
    data = b"".join(b"\x07" + struct.pack("<II", p, 256) for p in (a, b, c))
    data += b"\x05" + struct.pack("<I", n)
    memory.data[at : at + len(data)] = data
    return len(data)


def load(session: CudaSession, memory: Memory) -> int:
    return session.load_ptx(memory, PTX_AT, len(PTX), ENTRY_AT, 10)


def launch(
    session: CudaSession, memory: Memory, kernel: int, args_len: int = 32, **dims: object
) -> int:
    grid = dims.get("grid", (1, 1, 1))
    block = dims.get("block", (64, 1, 1))
    return session.launch(
        memory, kernel, grid=grid, block=block, shared_mem=0,  # type: ignore[arg-type]
        args_ptr=ARGV_AT, args_len=args_len,
    )  # fmt: skip


def last_error(session: CudaSession, memory: Memory) -> str:
    count = session.last_error_copy(memory, 8192, 512)
    return memory.read(8192, count).decode("utf-8")


# --- the happy path and batching -------------------------------------------------------


def test_vector_add_runs_at_sync_and_comes_back(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert kernel == 0
    assert launch(session, memory, kernel, argv(memory)) == 0
    assert memory.f32(C)[0] == -1  # queued, not run
    assert session.sync(memory) == 0
    np.testing.assert_array_equal(memory.f32(C), memory.f32(A) + memory.f32(B))
    assert session.last_error_len() == 0
    assert len(dispatcher.requests) == 2  # the load, then the launch at sync


def test_n_launches_are_one_request(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    args = argv(memory)
    for _ in range(100):
        assert launch(session, memory, kernel, args) == 0
    assert len(dispatcher.requests) == 1
    assert session.sync(memory) == 0
    assert len(dispatcher.requests) == 2
    batch = dispatcher.requests[1]
    assert len(batch.commands) == 100
    assert len(batch.regions) == 3  # a, b, c staged once for all 100 launches
    assert session.sync(memory) == 0  # nothing queued: no request
    assert len(dispatcher.requests) == 2


def test_a_full_batch_is_sent_at_256_commands(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    args = argv(memory)
    for _ in range(300):
        assert launch(session, memory, kernel, args) == 0
    assert [len(r.commands) for r in dispatcher.requests] == [1, 256]
    assert session.sync(memory) == 0
    assert [len(r.commands) for r in dispatcher.requests] == [1, 256, 44]


def test_a_batch_full_of_bytes_is_sent_first(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher, max_batch_bytes=1000)  # one launch stages 768
    kernel = load(session, memory)
    args = argv(memory)
    assert launch(session, memory, kernel, args) == 0
    assert launch(session, memory, kernel, args) == 0  # 1536 > 1000: the first goes alone
    assert [len(r.commands) for r in dispatcher.requests] == [1, 1]
    assert session.sync(memory) == 0
    assert [len(r.commands) for r in dispatcher.requests] == [1, 1, 1]


def test_a_launch_larger_than_a_batch_is_quota_exceeded(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    session = make_session(dispatcher, max_batch_bytes=512)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == AbiError.QUOTA_EXCEEDED
    assert "768 bytes" in last_error(session, memory)


def test_chained_launches_share_staged_buffers(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    memory.data[C : C + 256] = memory.data[A : A + 256]
    args = argv(memory, a=C, b=B, c=C)  # c = c + b, in place
    for _ in range(5):
        assert launch(session, memory, kernel, args) == 0
    assert session.sync(memory) == 0
    np.testing.assert_array_equal(memory.f32(C), memory.f32(A) + 5 * memory.f32(B))


def test_end_of_call_flushes_and_copies_back(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == 0
    session.end_call(memory, completed=True, final=False)  # a live instance: memory stays
    np.testing.assert_array_equal(memory.f32(C), memory.f32(A) + memory.f32(B))
    assert not dispatcher.requests[-1].end_session


def test_the_final_call_ends_the_session_without_copy_back(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == 0
    session.end_call(memory, completed=True, final=True)
    last = dispatcher.requests[-1]
    assert last.end_session and len(last.commands) == 1
    assert not any(region.copy_back for region in last.regions)
    assert memory.f32(C)[0] == -1
    session.close()  # already ended: no further request
    assert len(dispatcher.requests) == 2


def test_a_failed_call_drops_its_queue_but_ends_the_session(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == 0
    session.end_call(memory, completed=False, final=True)
    last = dispatcher.requests[-1]
    assert last.end_session and last.commands == ()


def test_an_untouched_session_sends_nothing(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    assert session.sync(memory) == 0
    session.end_call(None, completed=True, final=True)
    session.close()
    assert dispatcher.requests == []


def test_close_ends_an_open_session(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    load(session, memory)
    session.close()
    assert dispatcher.requests[-1] == Batch(session.session_id, (), (), end_session=True)


class BackgroundDispatcher(Dispatcher):
    """Also takes empty session ends in the background, up to `slots` of them."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots
        self.later: list[tuple[Batch, float]] = []

    def end_session_later(self, request: Batch, timeout_seconds: float) -> bool:
        if len(self.later) >= self.slots:
            return False
        self.later.append((request, timeout_seconds))
        return True


def test_an_empty_final_end_goes_to_the_background() -> None:
    dispatcher, memory = BackgroundDispatcher(slots=1), Memory()
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == 0
    assert session.sync(memory) == 0
    sent = len(dispatcher.requests)
    session.end_call(memory, completed=True, final=True)
    assert len(dispatcher.requests) == sent  # nothing waited for on the guest's thread
    ended = Batch(session.session_id, (), (), end_session=True)
    assert [request for request, _ in dispatcher.later] == [ended]
    assert dispatcher.later[0][1] > 0
    session.close()  # already ended
    assert len(dispatcher.later) == 1 and len(dispatcher.requests) == sent


def test_a_final_batch_with_commands_is_waited_for_not_backgrounded() -> None:
    dispatcher, memory = BackgroundDispatcher(slots=1), Memory()
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == 0
    session.end_call(memory, completed=True, final=True)
    assert dispatcher.later == []
    assert dispatcher.requests[-1].end_session and len(dispatcher.requests[-1].commands) == 1


def test_session_ends_are_sent_in_place_when_the_background_is_full() -> None:
    dispatcher, memory = BackgroundDispatcher(slots=1), Memory()
    first, second = make_session(dispatcher), make_session(dispatcher)
    load(first, memory)
    load(second, memory)
    first.close()
    second.end_call(memory, completed=False, final=True)
    assert [request.session_id for request, _ in dispatcher.later] == [first.session_id]
    assert dispatcher.requests[-1] == Batch(second.session_id, (), (), end_session=True)


# --- deferred errors -----------------------------------------------------------------


def test_queued_failures_surface_at_sync(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    args = argv(memory)
    dispatcher.fail_launches = {
        1: CommandResult(int(AbiError.LAUNCH_FAILED), "kernel faulted"),
        2: CommandResult(int(AbiError.QUOTA_EXCEEDED), "over quota"),
    }
    for _ in range(3):
        assert launch(session, memory, kernel, args) == 0
    assert session.sync(memory) == AbiError.LAUNCH_FAILED
    assert last_error(session, memory) == "launch_failed: kernel faulted (and 1 more failed)"
    assert session.sync(memory) == 0  # reported once
    assert last_error(session, memory).startswith("launch_failed")  # until the next error


def test_failures_of_an_automatic_flush_wait_for_sync(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    session = make_session(dispatcher, max_batch_commands=2)
    kernel = load(session, memory)
    args = argv(memory)
    dispatcher.fail_launches = {0: CommandResult(int(AbiError.QUOTA_EXCEEDED), "over quota")}
    assert launch(session, memory, kernel, args) == 0
    assert launch(session, memory, kernel, args) == 0  # the batch was sent; launch says 0
    assert session.sync(memory) == AbiError.QUOTA_EXCEEDED


def test_a_failed_load_returns_its_code(dispatcher: Dispatcher, memory: Memory) -> None:
    class Refusing(Dispatcher):
        def execute(self, request: Batch, timeout_seconds: float) -> BatchResult:
            self.requests.append(request)
            message = "only the kernel library runs on cpu"
            return BatchResult(
                tuple(
                    CommandResult(int(AbiError.NOT_AVAILABLE), message) for _ in request.commands
                ),
                {},
            )

    session = make_session(Refusing())
    assert load(session, memory) == AbiError.NOT_AVAILABLE
    assert last_error(session, memory) == "not_available: only the kernel library runs on cpu"
    assert launch(session, memory, 0, argv(memory)) == AbiError.INVALID_KERNEL  # not loaded


# --- validation before anything is sent ----------------------------------------------


def test_validation_fails_before_any_request(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    assert session.load_ptx(memory, -256, 16, 0, 10) == AbiError.INVALID_POINTER
    assert session.load_ptx(memory, PTX_AT, len(PTX), 65530, 10) == AbiError.INVALID_POINTER
    assert session.load_ptx(memory, PTX_AT, MAX_PTX_BYTES + 1, 0, 10) == AbiError.QUOTA_EXCEEDED
    assert session.load_ptx(memory, PTX_AT, len(PTX), 0, 0) == AbiError.INVALID_ARGS
    memory.data[200:202] = b"\xff\xfe"
    assert session.load_ptx(memory, PTX_AT, len(PTX), 200, 2) == AbiError.INVALID_ARGS
    assert session.load_ptx(memory, PTX_AT, len(PTX), 0, 6) == AbiError.MALFORMED_PTX  # "vector"
    assert session.load_ptx(memory, PTX_AT, 10, 0, 10) == AbiError.MALFORMED_PTX
    assert launch(session, memory, 0, 0) == AbiError.INVALID_KERNEL
    assert dispatcher.requests == []


def test_launch_checks_in_order(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    args = argv(memory)
    assert launch(session, memory, kernel + 1, args) == AbiError.INVALID_KERNEL
    assert launch(session, memory, -1, args) == AbiError.INVALID_KERNEL
    assert launch(session, memory, kernel, 4097, block=(0, 1, 1)) == AbiError.INVALID_DIMENSIONS
    assert launch(session, memory, kernel, 4097) == AbiError.KERNEL_ARGS_UNSUPPORTED
    memory.data[ARGV_AT] = 0x0A
    assert launch(session, memory, kernel, args) == AbiError.INVALID_ARGS
    argv(memory, c=65500)
    assert launch(session, memory, kernel, args) == AbiError.INVALID_POINTER
    assert "argv record 2 (ptr) [65500, 65756)" in last_error(session, memory)
    assert session.launch(
        memory, kernel, grid=(1, 1, 1), block=(1, 1, 1), shared_mem=0, args_ptr=65530,
        args_len=32,
    ) == AbiError.INVALID_POINTER  # fmt: skip
    assert len(dispatcher.requests) == 1  # the load only


def test_no_memory_export(dispatcher: Dispatcher) -> None:
    session = make_session(dispatcher)
    assert session.load_ptx(None, 0, 10, 0, 10) == AbiError.INVALID_POINTER
    assert session.last_error_len() > 0
    assert session.last_error_copy(None, 0, 16) == AbiError.INVALID_POINTER


def test_the_kernel_cap_is_256(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    ids = [load(session, memory) for _ in range(256)]
    assert ids == list(range(256))
    assert load(session, memory) == AbiError.QUOTA_EXCEEDED
    assert "256 kernels" in last_error(session, memory)


# --- last_error ----------------------------------------------------------------------


def test_last_error_copy(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    assert session.last_error_copy(memory, 8192, 64) == 0  # no error yet
    assert launch(session, memory, 5, 0) == AbiError.INVALID_KERNEL
    message = b"invalid_kernel: kernel 5 was not loaded by this instance"
    assert session.last_error_len() == len(message)
    assert session.last_error_copy(memory, 8192, 0) == 0
    assert session.last_error_copy(memory, 8192, 7) == 7
    assert memory.read(8192, 7) == message[:7]
    assert session.last_error_copy(memory, 8192, 4096) == len(message)
    assert memory.read(8192, len(message)) == message
    assert session.last_error_copy(memory, 65530, 64) == AbiError.INVALID_POINTER
    assert session.last_error_copy(memory, -1, 64) == AbiError.INVALID_POINTER
    assert session.last_error_len() == len(message)  # reading it does not change it


def test_last_error_is_per_session(dispatcher: Dispatcher, memory: Memory) -> None:
    one, other = make_session(dispatcher), make_session(dispatcher)
    assert launch(one, memory, 3, 0) == AbiError.INVALID_KERNEL
    assert one.last_error_len() > 0
    assert other.last_error_len() == 0
    kernel = load(one, memory)
    assert launch(other, memory, kernel, 0) == AbiError.INVALID_KERNEL  # ids are per instance


def test_long_errors_are_truncated(dispatcher: Dispatcher, memory: Memory) -> None:
    class Verbose(Dispatcher):
        def execute(self, request: Batch, timeout_seconds: float) -> BatchResult:
            return BatchResult(
                tuple(
                    CommandResult(int(AbiError.MALFORMED_PTX), "é" * 1000) for _ in request.commands
                ),
                {},
            )

    session = make_session(Verbose())
    assert load(session, memory) == AbiError.MALFORMED_PTX
    assert session.last_error_len() <= 512
    assert last_error(session, memory).endswith("é…")


# --- transport failures and back-pressure ---------------------------------------------


def test_back_pressure_is_retried_after_the_delay(dispatcher: Dispatcher, memory: Memory) -> None:
    clock = Clock()
    session = make_session(dispatcher, clock)
    busy = TransportError(AbiError.NOT_AVAILABLE, "busy", retry_after_seconds=0.25)
    dispatcher.errors = [busy, busy]
    assert load(session, memory) == 0
    assert clock.slept == [0.25, 0.25]
    assert len(dispatcher.requests) == 3
    assert dispatcher.timeouts[0] == pytest.approx(10.0)


def test_back_pressure_past_the_deadline_is_not_available(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    clock = Clock()
    session = make_session(dispatcher, clock)
    dispatcher.errors = [TransportError(AbiError.NOT_AVAILABLE, "busy", 4.0)] * 10
    assert load(session, memory) == AbiError.NOT_AVAILABLE
    assert clock.slept == [4.0, 4.0]  # 8 s of the 10 s deadline; a third wait would pass it
    assert last_error(session, memory) == "not_available: busy"


def test_an_unreachable_dispatcher_fails_every_queued_command(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory)) == 0
    dispatcher.errors = [TransportError(AbiError.NOT_AVAILABLE, "the GPU dispatcher is down")]
    assert session.sync(memory) == AbiError.NOT_AVAILABLE
    assert memory.writes == []


# --- regions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "spans"),
    [
        ([], []),
        ([(0, 4), (4, 4)], [(0, 4), (4, 8)]),  # touching ranges stay apart
        ([(0, 8), (4, 8)], [(0, 12)]),
        ([(0, 16), (4, 4)], [(0, 16)]),
        ([(10, 0)], [(10, 10)]),
        ([(0, 8), (8, 0)], [(0, 8)]),  # an empty range at a span's end joins it
        ([(8, 8), (8, 0), (0, 8)], [(0, 8), (8, 16)]),
        ([(100, 4), (0, 4), (2, 4)], [(0, 6), (100, 104)]),
    ],
)
def test_merge_ranges(ranges: list[tuple[int, int]], spans: list[tuple[int, int]]) -> None:
    assert merge_ranges(ranges) == spans


def test_build_request_refers_into_merged_regions(memory: Memory) -> None:
    launch = LaunchKernel(
        0, (1, 1, 1), (1, 1, 1), 0,
        (PointerRecord(1024, 256), PointerRecord(1100, 8), PointerRecord(2000, 0),
         ScalarArg(ArgTag.U32, 3)),
    )  # fmt: skip
    request = build_request("s", [launch], memory, copy_back=True)
    assert [(r.buffer_id, r.guest_offset, len(r.data)) for r in request.regions] == [
        (0, 1024, 256),
        (1, 2000, 0),
    ]
    sent = request.commands[0]
    assert isinstance(sent, LaunchKernel)
    assert sent.args[:3] == (BufferRef(0, 0, 256), BufferRef(0, 76, 8), BufferRef(1, 0, 0))
    assert request.regions[0].data == memory.read(1024, 256)


# --- the parsed-argv cache ---------------------------------------------------------------


def test_a_changed_argv_is_parsed_again(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    assert launch(session, memory, kernel, argv(memory, n=64)) == 0
    assert launch(session, memory, kernel, argv(memory, n=64)) == 0
    assert launch(session, memory, kernel, argv(memory, n=32)) == 0
    assert session.sync(memory) == 0
    counts = [c.args[3] for c in dispatcher.requests[-1].commands if isinstance(c, LaunchKernel)]
    assert counts == [ScalarArg(ArgTag.U32, 64)] * 2 + [ScalarArg(ArgTag.U32, 32)]


def test_a_bad_argv_fails_every_time(dispatcher: Dispatcher, memory: Memory) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    bad = argv(memory, a=len(memory.data) - 16)  # 256 bytes from 16 before the end
    assert launch(session, memory, kernel, bad) == AbiError.INVALID_POINTER
    assert launch(session, memory, kernel, bad) == AbiError.INVALID_POINTER
    memory.data.extend(bytes(65536))  # memory.grow: the same bytes are now in bounds
    assert launch(session, memory, kernel, bad) == 0


def test_device_buffer_argv_is_checked_at_every_launch(
    dispatcher: Dispatcher, memory: Memory
) -> None:
    session = make_session(dispatcher)
    kernel = load(session, memory)
    data = b"\x08" + struct.pack("<II", 1, 0)
    memory.data[ARGV_AT : ARGV_AT + len(data)] = data
    session.device_buffers[1] = 1024
    assert launch(session, memory, kernel, len(data)) == 0
    del session.device_buffers[1]  # freed: the same argv bytes no longer name a buffer
    assert launch(session, memory, kernel, len(data)) == AbiError.INVALID_ARGS
