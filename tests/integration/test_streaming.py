"""Streaming invoke through gateway → executor: output chunks as the guest writes them,
then the outcome; request errors before any event; a cancelled call stops its guest."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2
from prometheus_client.parser import text_string_to_metric_families
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as gateway_pb_grpc
from tensorwasm_client.cli import app
from tensorwasm_client.client import GatewayClient, TensorWasmError
from typer.testing import CliRunner

from .conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration

STDOUT = invocation_pb2.OUTPUT_STREAM_STDOUT
STDERR = invocation_pb2.OUTPUT_STREAM_STDERR
# A small executor, so that its per-tenant cap (half of twice the workers = 2) is easy to exceed.
_SMALL_EXECUTOR = {"TENSORWASM_EXECUTOR_WORKERS": "2"}
_TENANT_CAP = 2
T = TypeVar("T")


@pytest.fixture
def streamer(client: GatewayClient, wasm: Callable[[str], bytes]) -> str:
    client.create_function("stream", wasm("stream"))
    return "stream"


def _coalesced(events: list[gateway_pb.InvokeStreamResponse]) -> list[tuple[int, bytes]]:
    """Output events as (stream, bytes), adjacent chunks of one stream joined (how the
    bytes are cut into chunks is not part of the contract; their order is)."""
    runs: list[tuple[int, bytes]] = []
    for event in events:
        assert event.WhichOneof("event") == "output", event
        stream, data = event.output.stream, event.output.data
        if runs and runs[-1][0] == stream:
            runs[-1] = (stream, runs[-1][1] + data)
        else:
            runs.append((stream, data))
    return runs


def _split(
    events: list[gateway_pb.InvokeStreamResponse],
) -> tuple[list[gateway_pb.InvokeStreamResponse], gateway_pb.InvokeStreamResponse]:
    assert events, "the stream ended without any event"
    *output, last = events
    assert last.WhichOneof("event") == "outcome", last
    return output, last


def _request(
    function_id: str, export: str, *, timeout_seconds: float = 0, max_output_bytes: int = 0
) -> gateway_pb.InvokeStreamRequest:
    limits = invocation_pb2.InvocationLimits(max_output_bytes=max_output_bytes)
    if timeout_seconds:
        limits.timeout.CopyFrom(duration_pb2.Duration(seconds=int(timeout_seconds)))
    return gateway_pb.InvokeStreamRequest(
        invocation=gateway_pb.InvokeRequest(
            name=f"functions/{function_id}", export_name=export, limits=limits
        )
    )


@pytest.fixture
def stub(stack: RunningStack) -> Iterator[gateway_pb_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(stack.gateway) as channel:
        yield gateway_pb_grpc.GatewayServiceStub(channel)


def test_chunks_arrive_in_order_then_the_outcome(client: GatewayClient, streamer: str) -> None:
    output, last = _split(list(client.invoke_stream(streamer, "lines")))

    assert _coalesced(output) == [
        (STDOUT, b"out 1\n"),
        (STDERR, b"err 1\n"),
        (STDOUT, b"out 2\n"),
        (STDERR, b"err 2\n"),
        (STDOUT, b"out 3\n"),
    ]
    stdout = b"".join(e.output.data for e in output if e.output.stream == STDOUT)
    stderr = b"".join(e.output.data for e in output if e.output.stream == STDERR)
    assert (stdout, stderr) == (b"out 1\nout 2\nout 3\n", b"err 1\nerr 2\n")
    assert last.export_name == "lines"
    outcome = last.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    assert list(outcome.success.results) == [Value(i32=42)]
    # The bytes were streamed; the final outcome does not repeat them.
    assert (outcome.stdout, outcome.stderr) == (b"", b"")
    assert not outcome.stdout_truncated and not outcome.stderr_truncated


def test_a_trap_after_output_is_the_final_outcome(client: GatewayClient, streamer: str) -> None:
    output, last = _split(list(client.invoke_stream(streamer, "trap_after_output")))

    assert _coalesced(output) == [(STDOUT, b"before the trap\n")]
    failure = last.outcome.failure
    assert last.outcome.WhichOneof("result") == "failure"
    assert failure.reason == "TRAP"
    assert failure.trap_code == invocation_pb2.TRAP_CODE_UNREACHABLE


def test_the_deadline_still_ends_a_streaming_call(client: GatewayClient, streamer: str) -> None:
    started = time.monotonic()
    output, last = _split(
        list(client.invoke_stream(streamer, "spin_after_line", timeout_seconds=0.3))
    )

    assert _coalesced(output) == [(STDOUT, b"started\n")]
    assert last.outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert last.outcome.failure.trap_code == invocation_pb2.TRAP_CODE_INTERRUPT
    assert time.monotonic() - started < 10


def test_the_output_cap_applies_to_streamed_output(
    stub: gateway_pb_grpc.GatewayServiceStub, tenant: str, streamer: str
) -> None:
    events = list(
        stub.InvokeStream(
            _request(streamer, "lines", max_output_bytes=8),
            metadata=(("x-tensorwasm-tenant", tenant),),
            timeout=30,
        )
    )
    output, last = _split(events)

    assert _coalesced(output) == [
        (STDOUT, b"out 1\n"),
        (STDERR, b"err 1\n"),
        (STDOUT, b"ou"),
        (STDERR, b"er"),
    ]
    assert last.outcome.stdout_truncated and last.outcome.stderr_truncated
    assert list(last.outcome.success.results) == [Value(i32=42)]


def test_an_unknown_function_fails_before_any_event(client: GatewayClient) -> None:
    events = client.invoke_stream("nope", "lines")

    with pytest.raises(TensorWasmError) as caught:
        next(iter(events))
    assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "FUNCTION_NOT_FOUND")


def test_an_unknown_export_fails_before_any_event(client: GatewayClient, streamer: str) -> None:
    with pytest.raises(TensorWasmError) as caught:
        next(iter(client.invoke_stream(streamer, "missing")))
    assert caught.value.reason == "EXPORT_NOT_FOUND"


def test_an_executor_request_error_comes_before_any_event(
    client: GatewayClient, streamer: str
) -> None:
    # The executor checks the arguments; its error passes through the gateway unchanged.
    with pytest.raises(TensorWasmError) as caught:
        next(iter(client.invoke_stream(streamer, "lines", [Value(i32=1)])))
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "ARGUMENT_MISMATCH")


def test_the_default_export_is_named_on_the_outcome(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    client.create_function("echo", wasm("wasi_echo"))
    output, last = _split(list(client.invoke_stream("echo", stdin=b"typed")))
    assert last.export_name == "_start"
    assert _coalesced(output) == [
        (STDOUT, b"hello stdout\n"),
        (STDERR, b"hello stderr\n"),
        (STDOUT, b"typed"),
    ]


# --- cancellation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack whose executor has 2 workers, 4 slots and 2 per tenant."""
    running = start_stack(tmp_path_factory.mktemp("streaming"), _SMALL_EXECUTOR)
    try:
        yield running
    finally:
        running.stop()


def _admitted(attempt: Callable[[], T]) -> T:
    """Runs `attempt`, retrying refusals (RESOURCE_EXHAUSTED) for up to 3 s.

    A cancelled guest frees its slot a tick or so after the cancel reaches the executor,
    so a call right after a cancel may be refused briefly; a guest that kept spinning
    would hold its slot for its whole 60 s deadline and fail the test.
    """
    give_up = time.monotonic() + 3.0
    while True:
        try:
            return attempt()
        except (grpc.RpcError, TensorWasmError) as exc:
            code = exc.code if isinstance(exc, TensorWasmError) else exc.code().name
            if code != "RESOURCE_EXHAUSTED" or time.monotonic() > give_up:
                raise
            time.sleep(0.05)


def _first_event_then_cancel(stub: gateway_pb_grpc.GatewayServiceStub, tenant: str) -> None:
    """Streams a guest that prints a line and then spins (deadline 60 s), reads the line
    and cancels the call with the grpc stub's `cancel()`."""
    call: Any = stub.InvokeStream(
        _request("stream", "spin_after_line", timeout_seconds=60),
        metadata=(("x-tensorwasm-tenant", tenant),),
        timeout=20,
    )
    try:
        first = next(call)
    except grpc.RpcError:
        call.cancel()
        raise
    assert (first.output.stream, first.output.data) == (STDOUT, b"started\n")
    call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED


def test_a_cancelled_stream_stops_its_guest_and_frees_its_slot(
    small: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    tenant = "canceller"
    with small.client(tenant) as client:
        client.create_function("stream", wasm("stream"))
    with grpc.insecure_channel(small.gateway) as channel:
        stub = gateway_pb_grpc.GatewayServiceStub(channel)
        # Twice the tenant cap, one after the other: a guest that kept spinning after its
        # cancel (or a slot that leaked) would leave no slot for the third call.
        for _ in range(2 * _TENANT_CAP):
            _admitted(lambda: _first_event_then_cancel(stub, tenant))

        # The cap's worth at once: every slot and both worker threads are free again
        # (a call prints its line only once a worker runs it; the RPC deadline is 20 s).
        with ThreadPoolExecutor(_TENANT_CAP) as pool:
            calls = [
                pool.submit(_admitted, lambda: _first_event_then_cancel(stub, tenant))
                for _ in range(_TENANT_CAP)
            ]
            for call in calls:
                call.result()

    with small.client(tenant) as client:
        for _ in range(_TENANT_CAP + 1):
            response = _admitted(lambda: client.invoke("stream", "lines"))
            assert list(response.outcome.success.results) == [Value(i32=42)]
            assert response.outcome.stdout == b"out 1\nout 2\nout 3\n"


def test_leaving_a_client_stream_early_cancels_the_guest(
    small: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    tenant = "leaver"

    def leave_after_the_first_event(client: GatewayClient) -> None:
        with client.invoke_stream("stream", "spin_after_line", timeout_seconds=60) as call:
            first = next(iter(call))
            assert first.output.data == b"started\n"
        # Leaving the block cancelled the call.

    with small.client(tenant) as client:
        client.create_function("stream", wasm("stream"))
        for _ in range(2 * _TENANT_CAP):
            _admitted(lambda: leave_after_the_first_event(client))
        response = _admitted(lambda: client.invoke("stream", "lines"))
        assert list(response.outcome.success.results) == [Value(i32=42)]


def _invocation_codes(metrics_address: str, tenant: str) -> dict[str, float]:
    """The gateway's `tensorwasm_gateway_invocations_total` for one tenant, by code."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    codes: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tensorwasm_gateway_invocations_total" and (
                sample.labels.get("tenant") == tenant
            ):
                code = sample.labels["code"]
                codes[code] = codes.get(code, 0.0) + sample.value
    return codes


def test_successful_streamed_cli_calls_are_counted_ok(
    stack: RunningStack, client: GatewayClient, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    """`tensorwasm invoke --stream` that exits 0 is an OK call in the gateway's metrics:
    the CLI reads the stream to its end instead of cancelling the call as soon as it has
    the outcome, and the gateway's stream wrappers end in the call's own context (no
    "created in a different Context" errors, no CANCELLED or INTERNAL counted)."""
    client.create_function("hello", wasm("hello"))
    gateway = stack.services["gateway"]
    log = Path(gateway.log_path)
    log_offset = log.stat().st_size
    calls = 30
    runner = CliRunner()
    for _ in range(calls):
        result = runner.invoke(
            app, ["--gateway", stack.gateway, "--tenant", tenant, "invoke", "hello", "--stream"]
        )
        assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 60
    codes = _invocation_codes(gateway.metrics_address, tenant)
    while sum(codes.values()) < calls and time.monotonic() < deadline:
        time.sleep(0.1)
        codes = _invocation_codes(gateway.metrics_address, tenant)
    assert codes == {"OK": float(calls)}
    with log.open("rb") as lines:
        lines.seek(log_offset)
        assert b"different Context" not in lines.read()


def test_streams_cancelled_after_their_outcome_are_still_counted(
    stack: RunningStack, client: GatewayClient, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    """A client that cancels as soon as it has the outcome may leave the gateway's stream
    to be finalised by the event loop, in another context: each call is still counted
    (whatever its code) and no "different Context" error is logged."""
    client.create_function("hello", wasm("hello"))
    gateway = stack.services["gateway"]
    log = Path(gateway.log_path)
    log_offset = log.stat().st_size
    calls = 20
    for _ in range(calls):
        with client.invoke_stream("hello") as events:
            for event in events:
                if event.HasField("outcome"):
                    events.cancel()
                    break
    deadline = time.monotonic() + 60
    codes = _invocation_codes(gateway.metrics_address, tenant)
    while sum(codes.values()) < calls and time.monotonic() < deadline:
        time.sleep(0.1)
        codes = _invocation_codes(gateway.metrics_address, tenant)
    assert sum(codes.values()) == calls, codes
    assert set(codes) <= {"OK", "CANCELLED"}, codes
    with log.open("rb") as lines:
        lines.seek(log_offset)
        assert b"different Context" not in lines.read()
