"""wasi:tensor and wasi:scheduler guests through the whole stack: staged input on Invoke,
InvokeStream and instances; emitted chunks concatenated on unary calls, as their own
events on InvokeStream, and as SSE `event: chunk` (or raw bytes) on the HTTP face; a WAT
guest and a C guest (clang wasm32-wasi, SDK header tensorwasm/tensor.h)."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm_client.client import GatewayClient

from tests.guests import NO_CLANG, cli, find_clang, load_builder
from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration


@pytest.fixture
def echo(client: GatewayClient, wasm: Callable[[str], bytes]) -> str:
    client.create_function("echo", wasm("tensor_stream"))
    return "echo"


def _http(
    stack: RunningStack, path: str, tenant: str, body: object, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    host, port = stack.services["gateway"].http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(
            "POST", path, body=json.dumps(body).encode(),
            headers={"x-tensorwasm-tenant": tenant, **headers},
        )  # fmt: skip
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def _chunks_metric(stack: RunningStack, tenant: str) -> float:
    host, port = stack.services["gateway"].http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/metrics", headers={"x-tensorwasm-tenant": tenant})
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    found = re.search(r"^tensor_wasm_streaming_chunks_emitted_total (\S+)$", text, re.M)
    assert found, "the compatibility chunk counter is missing"
    return float(found[1])


def test_unary_invoke_reads_the_input_and_returns_the_chunks(
    client: GatewayClient, echo: str
) -> None:
    reply = client.invoke(echo, "_start", guest_input="héllo wörld".encode())
    assert reply.outcome.WhichOneof("result") == "success"
    assert reply.outcome.chunks == "echo:héllo wörld".encode()
    # Without input the guest reads nothing and still emits its prefix.
    assert client.invoke(echo, "_start").outcome.chunks == b"echo:"


def test_async_invocations_carry_the_input(client: GatewayClient, echo: str) -> None:
    started = client.start_invocation(echo, "_start", guest_input=b"later")
    done = client.wait_invocation(started.name)
    assert done.outcome.chunks == b"echo:later"


def test_invoke_stream_sends_each_chunk_as_its_own_event(client: GatewayClient, echo: str) -> None:
    events = list(client.invoke_stream(echo, "_start", guest_input=b"abcdefg"))
    *streamed, last = events
    assert [e.WhichOneof("event") for e in streamed] == ["chunk"] * 4
    assert [e.chunk for e in streamed] == [b"echo:", b"abc", b"def", b"g"]
    assert last.WhichOneof("event") == "outcome" and last.outcome.chunks == b""
    # Chunks and stdout keep the order the guest produced them in.
    events = list(client.invoke_stream(echo, "interleave"))
    kinds = [(e.WhichOneof("event"), e.chunk or e.output.data) for e in events[:-1]]
    assert kinds == [("chunk", b"echo:"), ("output", b"out\n"), ("chunk", b"echo")]
    assert events[-1].WhichOneof("event") == "outcome"


def test_instances_keep_their_input_unless_a_call_stages_one(
    client: GatewayClient, echo: str
) -> None:
    created = client.create_instance(echo, guest_input=b"mine")
    assert created.HasField("instance"), created.outcome
    try:
        name = created.instance.name
        assert client.call_instance(name, "_start").outcome.chunks == b"echo:mine"
        call = client.call_instance(name, "_start", guest_input=b"call")
        assert call.outcome.chunks == b"echo:call"
    finally:
        client.delete_instance(created.instance.name)


def test_a_chunk_over_the_cap_is_refused_and_a_spinning_guest_still_stops(
    client: GatewayClient, echo: str
) -> None:
    over = client.invoke(echo, "emit_len", [Value(i32=(64 << 10) + 1)])
    assert list(over.outcome.success.results) == [Value(i32=-2)] and over.outcome.chunks == b""
    stopped = client.invoke(echo, "spin_forever", timeout_seconds=1)
    assert stopped.outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert stopped.outcome.failure.trap_code == invocation_pb2.TRAP_CODE_INTERRUPT


def test_http_invoke_stream_serves_chunks_as_sse_or_raw_bytes(
    stack: RunningStack, client: GatewayClient, echo: str, tenant: str
) -> None:
    before = _chunks_metric(stack, tenant)
    body = {"export": "_start", "input": "two\nlines"}
    status, headers, sse = _http(
        stack, f"/functions/{echo}/invoke-stream", tenant, body, accept="text/event-stream"
    )
    assert status == 200 and headers["content-type"] == "text/event-stream"
    frames = [f for f in sse.decode().split("\n\n") if f]
    chunks = [f for f in frames if f.startswith("event: chunk\n")]
    # Each chunk's lines are SSE data lines: a client joins them back with "\n".
    texts = ["\n".join(line[6:] for line in f.split("\n")[1:]) for f in chunks]
    assert texts == ["echo:", "two", "\nli", "nes"]
    assert frames[-1].startswith("event: end\ndata: ")
    assert _chunks_metric(stack, tenant) - before == 4
    status, headers, raw = _http(stack, f"/functions/{echo}/invoke-stream", tenant, body)
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert raw == b"echo:two\nlines"
    # The unary face returns them concatenated.
    status, _, unary = _http(stack, f"/functions/{echo}/invoke", tenant, body)
    assert status == 200 and json.loads(unary)["chunks"] == "echo:two\nlines"


@pytest.fixture(scope="module")
def c_guest(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    clang = find_clang()
    if clang is None:
        pytest.skip(NO_CLANG)
    builder = load_builder()
    source = builder.TENSOR_EXAMPLES / "word_stream.c"
    out = tmp_path_factory.mktemp("tensor-guest")
    path: Path = builder.build_c(source, out, clang)
    return path.read_bytes()


def test_a_c_guest_streams_its_input_back_word_by_word(
    client: GatewayClient, c_guest: bytes
) -> None:
    client.create_function("words", c_guest)
    events = list(client.invoke_stream("words", "_start", guest_input=b"hello tensor  world"))
    assert [e.chunk for e in events[:-1]] == [b"HELLO ", b"TENSOR ", b"WORLD "]
    assert events[-1].outcome.WhichOneof("result") == "success"
    probe = client.invoke("words", "probe").outcome.success.results[0].i32
    # over-cap emit -2 (low byte), yield 0 (continue), deadline bounded (1)
    assert (probe & 0xFF, (probe >> 8) & 0xFF, probe >> 16) == (0xFE, 0, 1)


@pytest.mark.parametrize("stream", [False, True])
def test_the_cli_prints_emitted_chunks(
    stack: RunningStack, client: GatewayClient, echo: str, tenant: str, stream: bool
) -> None:
    flags = ["--stream"] if stream else []
    done = cli(stack.gateway, tenant, "invoke", echo, "--export", "_start", *flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo:[]\n"  # the chunk, then the (empty) results as JSON
