"""Streaming invoke in the executor: the sandbox's output callback and cancellation (the
epoch-deadline callback), and the servicer's InvokeStream (events, cancel, admission)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm_common.errors import ExportNotFoundError
from tensorwasm_executor.admission import Admission
from tensorwasm_executor.guest_calls import GuestCalls
from tensorwasm_executor.instances.table import InstanceTable
from tensorwasm_executor.scheduling import FairPool
from tensorwasm_executor.servicer import OUTPUT_CHUNK_BYTES, ExecutorServicer
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_executor.wasm.sandbox import CompiledModule, Outcome, Sandbox
from tensorwasm_executor.wasm.values import WasmValue

WAT = Path(__file__).parents[3] / "fixtures" / "wat"
DIGEST = "ab" * 32
# Far longer than any test may take: a call that ends did so because it was cancelled.
LONG = 60.0


def _compile(sandbox: Sandbox, name: str) -> CompiledModule:
    wasm = bytes(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text()))
    return sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(default_timeout_seconds=30.0) as box:
        yield box


@pytest.fixture(scope="module")
def stream(sandbox: Sandbox) -> CompiledModule:
    return _compile(sandbox, "stream")


@pytest.fixture(scope="module")
def count(sandbox: Sandbox) -> CompiledModule:
    return _compile(sandbox, "count")


def _run_in_thread(call: Callable[[], Outcome]) -> tuple[threading.Thread, list[Outcome]]:
    done: list[Outcome] = []
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    return thread, done


# --- sandbox: output callback ----------------------------------------------------------------


def test_output_callback_gets_the_chunks_in_order(sandbox: Sandbox, stream: CompiledModule) -> None:
    chunks: list[tuple[str, bytes]] = []

    outcome = sandbox.invoke(
        stream, "lines", [], on_output=lambda name, data: chunks.append((name, data))
    )

    assert outcome.failure is None, outcome.failure
    assert outcome.results == (WasmValue.i32(42),)
    assert chunks == [
        ("stdout", b"out 1\n"),
        ("stderr", b"err 1\n"),
        ("stdout", b"out 2\n"),
        ("stderr", b"err 2\n"),
        ("stdout", b"out 3\n"),
    ]
    # Streamed output is not buffered a second time.
    assert (outcome.stdout, outcome.stderr) == (b"", b"")
    assert not outcome.stdout_truncated and not outcome.stderr_truncated


def test_output_callback_respects_the_cap(sandbox: Sandbox, stream: CompiledModule) -> None:
    chunks: list[tuple[str, bytes]] = []

    outcome = sandbox.invoke(
        stream,
        "lines",
        [],
        max_output_bytes=8,
        on_output=lambda name, data: chunks.append((name, data)),
    )

    assert outcome.results == (WasmValue.i32(42),)
    # Each stream keeps its first 8 bytes; the rest is dropped, never sent, and flagged.
    assert chunks == [
        ("stdout", b"out 1\n"),
        ("stderr", b"err 1\n"),
        ("stdout", b"ou"),
        ("stderr", b"er"),
    ]
    assert outcome.stdout_truncated and outcome.stderr_truncated


def test_a_zero_cap_sends_nothing(sandbox: Sandbox, stream: CompiledModule) -> None:
    chunks: list[tuple[str, bytes]] = []
    outcome = sandbox.invoke(
        stream, "lines", [], max_output_bytes=0, on_output=lambda n, d: chunks.append((n, d))
    )
    assert chunks == []
    assert outcome.stdout_truncated and outcome.stderr_truncated


def test_a_failing_output_callback_does_not_fail_the_guest(
    sandbox: Sandbox, stream: CompiledModule
) -> None:
    def explode(name: str, data: bytes) -> None:
        raise RuntimeError("consumer went away")

    outcome = sandbox.invoke(stream, "lines", [], on_output=explode)
    assert outcome.results == (WasmValue.i32(42),)


# --- sandbox: cancellation -------------------------------------------------------------------


def test_a_spinning_guest_is_cancelled_from_another_thread(
    sandbox: Sandbox, stream: CompiledModule
) -> None:
    cancel = threading.Event()
    started = threading.Event()
    chunks: list[bytes] = []

    def on_output(name: str, data: bytes) -> None:
        chunks.append(data)
        started.set()

    thread, done = _run_in_thread(
        lambda: sandbox.invoke(
            stream, "spin_after_line", [], timeout_seconds=LONG, on_output=on_output, cancel=cancel
        )
    )
    assert started.wait(10), "the guest never wrote its line"
    cancel.set()
    thread.join(10)

    assert not thread.is_alive(), "the cancelled guest kept running"
    [outcome] = done
    assert outcome.results is None
    assert outcome.failure is not None
    assert outcome.failure.reason == "CANCELLED"
    assert outcome.failure.trap_code is None
    assert chunks == [b"started\n"]


def test_a_cancel_set_before_the_call_runs_nothing(
    sandbox: Sandbox, stream: CompiledModule
) -> None:
    cancel = threading.Event()
    cancel.set()
    chunks: list[bytes] = []

    outcome = sandbox.invoke(
        stream, "lines", [], on_output=lambda n, d: chunks.append(d), cancel=cancel
    )

    assert outcome.failure is not None
    assert outcome.failure.reason == "CANCELLED"
    assert chunks == []


def test_the_deadline_still_holds_with_a_cancel_event(
    sandbox: Sandbox, stream: CompiledModule
) -> None:
    outcome = sandbox.invoke(
        stream, "spin_after_line", [], timeout_seconds=0.2, cancel=threading.Event()
    )
    assert outcome.failure is not None
    assert outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert outcome.failure.trap_code == "INTERRUPT"
    assert outcome.stdout == b"started\n"  # no on_output: buffered as usual


def test_an_uncancelled_guest_runs_across_many_ticks(
    sandbox: Sandbox, count: CompiledModule
) -> None:
    # Long enough to span several epoch ticks: the callback lets it go on each time.
    n = 300_000_000
    outcome = sandbox.invoke(
        count, "count", [WasmValue.i64(n)], timeout_seconds=LONG, cancel=threading.Event()
    )
    assert outcome.failure is None, outcome.failure
    assert outcome.results == (WasmValue.i64(n),)
    assert outcome.guest_seconds > 0


def test_the_epoch_callback_survives_garbage_collection(
    sandbox: Sandbox, stream: CompiledModule
) -> None:
    # A full collection while wasmtime holds the ctypes callback, then more ticks: a
    # callback that was not kept alive would crash the process here.
    cancel = threading.Event()

    def collect_then_cancel_later(name: str, data: bytes) -> None:
        gc.collect()
        threading.Timer(0.1, cancel.set).start()

    outcome = sandbox.invoke(
        stream,
        "spin_after_line",
        [],
        timeout_seconds=LONG,
        on_output=collect_then_cancel_later,
        cancel=cancel,
    )
    assert outcome.failure is not None
    assert outcome.failure.reason == "CANCELLED"
    gc.collect()


def test_unary_calls_still_work_after_cancellable_ones(
    sandbox: Sandbox, stream: CompiledModule
) -> None:
    outcome = sandbox.invoke(stream, "spin_after_line", [], timeout_seconds=0.1)
    assert outcome.failure is not None
    assert outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert sandbox.invoke(stream, "lines", []).stdout == b"out 1\nout 2\nout 3\n"


# --- servicer: InvokeStream ------------------------------------------------------------------


class FakeContext:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def __init__(self) -> None:
        self.done_callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.done_callbacks.append(callback)

    def end(self) -> None:
        for callback in self.done_callbacks:
            callback(self)


class FakeModules:
    def __init__(self, module: CompiledModule) -> None:
        self.module = module

    async def get(self, digest: str, tenant: str = "") -> tuple[CompiledModule, bool]:
        return self.module, True


class BlockingSandbox:
    """Writes a line, then ignores its cancel event until the test releases it: a guest
    thread that outlives its handler."""

    engine_fingerprint = "fake"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.cancel_seen = threading.Event()

    def invoke(self, module: object, export: str, args: object, **options: Any) -> Outcome:
        options["on_output"]("stdout", b"started\n")
        cancel: threading.Event = options["cancel"]
        while not self.release.wait(0.01):
            if cancel.is_set():
                self.cancel_seen.set()
        return Outcome((), None, b"", b"", False, False, 0.0)


def _servicer(sandbox: Any, module: Any, admission: Admission, workers: FairPool) -> Any:
    settings = ExecutorSettings()
    instances = InstanceTable(max_instances=4, max_per_tenant=2)
    calls = GuestCalls(
        settings, sandbox, FakeModules(module), workers, admission=admission, instances=instances
    )
    return ExecutorServicer(calls, guest_dirs_root=None)


def _request(export: str, *, timeout_seconds: int = 0, tenant: str = "acme") -> Any:
    request = pb.InvokeStreamRequest(
        invocation=pb.InvokeRequest(module_digest=DIGEST, export_name=export, tenant=tenant)
    )
    if timeout_seconds:
        request.invocation.limits.timeout.seconds = timeout_seconds
    return request


async def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "condition never held"
        await asyncio.sleep(0.01)


@pytest.fixture
def workers() -> Iterator[FairPool]:
    pool = FairPool(2, 2, thread_name_prefix="test-guest")
    yield pool
    pool.shutdown()


def test_invoke_stream_yields_chunks_then_the_outcome(
    sandbox: Sandbox, stream: CompiledModule, workers: FairPool
) -> None:
    admission = Admission(max_in_flight=4, max_per_tenant=2)
    servicer = _servicer(sandbox, stream, admission, workers)

    async def scenario() -> list[pb.InvokeStreamResponse]:
        return [e async for e in servicer.InvokeStream(_request("lines"), FakeContext())]

    events = asyncio.run(scenario())

    *output, last = events
    assert [(e.output.stream, e.output.data) for e in output] == [
        (invocation_pb2.OUTPUT_STREAM_STDOUT, b"out 1\n"),
        (invocation_pb2.OUTPUT_STREAM_STDERR, b"err 1\n"),
        (invocation_pb2.OUTPUT_STREAM_STDOUT, b"out 2\n"),
        (invocation_pb2.OUTPUT_STREAM_STDERR, b"err 2\n"),
        (invocation_pb2.OUTPUT_STREAM_STDOUT, b"out 3\n"),
    ]
    assert last.WhichOneof("event") == "outcome"
    assert last.outcome.success.results[0].i32 == 42
    assert (last.outcome.stdout, last.outcome.stderr) == (b"", b"")
    assert admission.in_flight == 0


def test_a_large_write_is_split_into_bounded_chunks(workers: FairPool) -> None:
    class BigWriter:
        def invoke(self, module: object, export: str, args: object, **options: Any) -> Outcome:
            options["on_output"]("stderr", b"x" * (2 * OUTPUT_CHUNK_BYTES + 5))
            return Outcome((), None, b"", b"", False, False, 0.0)

    admission = Admission(max_in_flight=4, max_per_tenant=2)
    servicer = _servicer(BigWriter(), object(), admission, workers)

    async def scenario() -> list[pb.InvokeStreamResponse]:
        return [e async for e in servicer.InvokeStream(_request("any"), FakeContext())]

    *output, last = asyncio.run(scenario())
    assert [len(e.output.data) for e in output] == [OUTPUT_CHUNK_BYTES, OUTPUT_CHUNK_BYTES, 5]
    assert {e.output.stream for e in output} == {invocation_pb2.OUTPUT_STREAM_STDERR}
    assert last.HasField("outcome")


def test_a_request_error_comes_before_any_event_and_frees_the_slot(
    sandbox: Sandbox, stream: CompiledModule, workers: FairPool
) -> None:
    admission = Admission(max_in_flight=4, max_per_tenant=2)
    servicer = _servicer(sandbox, stream, admission, workers)

    async def scenario() -> None:
        events = servicer.InvokeStream(_request("missing"), FakeContext())
        with pytest.raises(ExportNotFoundError):
            await events.__anext__()

    asyncio.run(scenario())
    assert admission.in_flight == 0


@pytest.mark.parametrize("how", ["aclose", "task-cancel", "rpc-done"])
def test_leaving_the_stream_cancels_the_guest(
    sandbox: Sandbox, stream: CompiledModule, workers: FairPool, how: str
) -> None:
    admission = Admission(max_in_flight=4, max_per_tenant=2)
    servicer = _servicer(sandbox, stream, admission, workers)

    async def scenario() -> None:
        context = FakeContext()
        events: AsyncIterator[pb.InvokeStreamResponse] = servicer.InvokeStream(
            _request("spin_after_line", timeout_seconds=int(LONG)), context
        )
        first = await events.__anext__()
        assert first.output.data == b"started\n"
        assert admission.tenant_in_flight("acme") == 1
        if how == "aclose":
            await events.aclose()  # type: ignore[attr-defined]
        elif how == "task-cancel":
            waiting = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        else:
            context.end()  # the RPC ended (client cancel) while the handler still waits
            with pytest.raises(StopAsyncIteration):
                while True:  # the guest stops; its CANCELLED outcome is the last event
                    event = await events.__anext__()
                    if event.HasField("outcome"):
                        assert event.outcome.failure.reason == "CANCELLED"
        await _wait_for(lambda: admission.in_flight == 0)

    asyncio.run(scenario())


def test_the_slot_is_held_until_the_guest_thread_returns(workers: FairPool) -> None:
    admission = Admission(max_in_flight=4, max_per_tenant=1)
    blocking = BlockingSandbox()
    servicer = _servicer(blocking, object(), admission, workers)

    async def scenario() -> None:
        events: Any = servicer.InvokeStream(_request("any"), FakeContext())
        assert (await events.__anext__()).output.data == b"started\n"
        await events.aclose()
        assert await asyncio.to_thread(blocking.cancel_seen.wait, 10)
        # The handler is gone but the guest thread is not: the tenant's slot still counts.
        assert admission.tenant_in_flight("acme") == 1
        blocking.release.set()
        await _wait_for(lambda: admission.in_flight == 0)

    asyncio.run(scenario())


def test_a_slot_releases_once_from_any_thread() -> None:
    admission = Admission(max_in_flight=2, max_per_tenant=1)
    slot = admission.acquire("acme")
    assert admission.tenant_in_flight("acme") == 1
    threads = [threading.Thread(target=slot.release) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admission.in_flight == 0
    assert admission.tenant_in_flight("acme") == 0
    with admission.admit("acme"):  # the slot is really free, and only once
        assert admission.in_flight == 1


class ChunkingSandbox:
    """Emits a chunk, waits for its cancel event (the client going away), emits again and
    records what the servicer's sink answered."""

    engine_fingerprint = "fake"

    def __init__(self) -> None:
        self.after_cancel: list[bool] = []
        self.done = threading.Event()

    def invoke(self, module: object, export: str, args: object, **options: Any) -> Outcome:
        sink = options["on_chunk"]
        assert sink(b"first")
        options["cancel"].wait(LONG)
        self.after_cancel.append(sink(b"late"))
        self.done.set()
        return Outcome((), None, b"", b"", False, False, 0.0)


def test_chunks_are_events_and_once_the_client_is_gone_the_sink_refuses(
    workers: FairPool,
) -> None:
    sandbox = ChunkingSandbox()
    admission = Admission(max_in_flight=4, max_per_tenant=2)
    servicer = _servicer(sandbox, object(), admission, workers)

    async def scenario() -> None:
        context = FakeContext()
        events: AsyncIterator[pb.InvokeStreamResponse] = servicer.InvokeStream(
            _request("emit"), context
        )
        first = await events.__anext__()
        assert (first.WhichOneof("event"), first.chunk) == ("chunk", b"first")
        context.end()  # the client went away
        await _wait_for(sandbox.done.is_set)
        await events.aclose()  # type: ignore[attr-defined]
        await _wait_for(lambda: admission.in_flight == 0)

    asyncio.run(scenario())
    assert sandbox.after_cancel == [False]  # the guest's emit then answers -3
