"""Group `invoke_stream`: InvokeStream through the secured gateway -> executor against a bare
grpcio server stream (one hop, and relayed once: the two-hop floor), same run.

The guest (`guests/stream.wat`) emits `n` chunks of `size` zero bytes with `wasi:tensor`
`emit_chunk`; each accepted chunk is one InvokeStream event, then the outcome. The anchors
are the bench echo server's `Download` (a grpc.aio server stream of the same chunks, no
interceptors, no application logic), called directly and through a relay that forwards each
chunk as it arrives (`tests/bench/echo_server.py`). One sync client, one stream at a time.

Harness-timed (wall time of a whole stream of one chunk):
- `grpcio/stream/1x<S>`, `grpcio/stream_two_hop/1x<S>`, `invoke_stream/call/1x<S>`.

Self-timed, stored in the params of `invoke_stream/call/1x<S>`:
- `first_chunk`: from the call to the first chunk in the client's hands (the stream is then
  drained), 10,000 samples (1,000 with --quick), for P99.9 with enough samples behind it:
  `grpcio/first_chunk`, `grpcio/first_chunk_two_hop`, `invoke_stream/first_chunk`;
- `chunks`: a whole stream of N chunks of S bytes (N = 256, 64 with --quick), from the call
  to the last message: `grpcio/chunks/<N>x<S>`, `grpcio/chunks_two_hop/<N>x<S>`,
  `invoke_stream/chunks/<N>x<S>`. Chunks per second = N / time; the ratio of times is the
  inverse ratio of rates. `chunks_per_second_p50` is stored in each entry.

The gateway runs as in production (the `e2e` group's setup): a bearer token scoped to one
tenant, the audit log written to a file, rate limits on (set high enough not to reject).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.echo_server import DOWNLOAD_METHOD, running_echo_server
from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Reported, Tier, as_params, run_self_timed

GUEST = Path(__file__).resolve().parent.parent / "guests" / "stream.wat"
FUNCTION_ID = "bench-stream"
TENANT = "bench"
TOKEN = "bench-token-5e0b9c3a17d2f486"
METADATA = (("authorization", f"Bearer {TOKEN}"), ("x-tensorwasm-tenant", TENANT))
CALL_TIMEOUT_SECONDS = 30.0
CHUNK_BYTES = 1024
CHUNKS, CHUNKS_QUICK = 256, 64
FIRST_CHUNK_SAMPLES, FIRST_CHUNK_SAMPLES_QUICK = 10_000, 1_000
CHUNKS_TIER = Tier(samples=200, warmup=10, blocks=10)
CHUNKS_TIER_QUICK = Tier(samples=30, warmup=3, blocks=3)

Stream = Callable[[int], Iterator[bytes]]


def _invoke_stream(stub: pb_grpc.GatewayServiceStub, chunk_bytes: int) -> Stream:
    """A function that starts InvokeStream of `stream(n, chunk_bytes)` and yields each
    chunk's bytes; it checks every event and that the outcome is success with result 0."""

    def start(n: int) -> Iterator[bytes]:
        request = pb.InvokeStreamRequest(
            invocation=pb.InvokeRequest(
                name=f"functions/{FUNCTION_ID}",
                export_name="stream",
                args=[values_pb2.Value(i32=n), values_pb2.Value(i32=chunk_bytes)],
            )
        )
        outcome = None
        for event in stub.InvokeStream(request, metadata=METADATA, timeout=CALL_TIMEOUT_SECONDS):
            kind = event.WhichOneof("event")
            if kind == "chunk":
                yield event.chunk
            elif kind == "outcome":
                outcome = event.outcome
            else:
                raise RuntimeError(f"unexpected event {kind}: {event}")
        if (
            outcome is None
            or outcome.WhichOneof("result") != "success"
            or [v.i32 for v in outcome.success.results] != [0]
        ):
            raise RuntimeError(f"stream({n}, {chunk_bytes}) did not return 0: {outcome}")

    return start


def _download(channel: grpc.Channel, chunk_bytes: int) -> Stream:
    """A function that starts the echo server's Download of n chunks of `chunk_bytes`."""
    call = channel.unary_stream(DOWNLOAD_METHOD)

    def start(n: int) -> Iterator[bytes]:
        request = (n * chunk_bytes).to_bytes(8, "little") + chunk_bytes.to_bytes(8, "little")
        yield from call(request, timeout=CALL_TIMEOUT_SECONDS)

    return start


def _whole(stream: Stream, n: int, chunk_bytes: int) -> Callable[[], None]:
    """Drains a stream of n chunks, checking their count and size."""

    def run() -> None:
        count = 0
        for chunk in stream(n):
            if len(chunk) != chunk_bytes:
                raise RuntimeError(f"a chunk of {len(chunk)} bytes, not {chunk_bytes}")
            count += 1
        if count != n:
            raise RuntimeError(f"{count} chunks, not {n}")

    return run


def _first_chunk(stream: Stream, chunk_bytes: int) -> Callable[[], Reported]:
    """Times a one-chunk stream up to its first chunk, then drains it (untimed)."""

    def run() -> Reported:
        start = time.perf_counter_ns()
        chunks = stream(1)
        first = next(chunks)
        elapsed = time.perf_counter_ns() - start
        if len(first) != chunk_bytes or list(chunks):
            raise RuntimeError("the stream did not carry exactly one chunk of the size asked")
        return Reported(elapsed)

    return run


@group("invoke_stream")
def invoke_stream(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts the secured stack and two echo servers, deploys the stream guest, measures."""
    with contextlib.ExitStack() as cleanup:
        data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
        stack = LocalStack(
            data_dir / "stack",
            ephemeral_ports=True,
            extra_env={
                "OTEL_TRACES_EXPORTER": "none",
                "TENSORWASM_GATEWAY_TOKENS": f"{TOKEN}:tenant={TENANT}",
                "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{data_dir / 'audit.jsonl'}",
                "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "1000000",
                "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": "1000000",
            },
        )
        cleanup.callback(stack.stop)
        gateway = stack.start()["gateway"].grpc_address
        leaf = cleanup.enter_context(running_echo_server(data_dir / "echo-leaf.log"))
        relay = cleanup.enter_context(
            running_echo_server(data_dir / "echo-relay.log", forward=leaf)
        )
        with GatewayClient(gateway, tenant=TENANT, token=TOKEN) as client:
            client.create_function(FUNCTION_ID, bytes(wasmtime.wat2wasm(GUEST.read_text())))

        stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(gateway)))
        size = CHUNK_BYTES
        streams: dict[str, Stream] = {
            "one_hop": _download(cleanup.enter_context(grpc.insecure_channel(leaf)), size),
            "two_hop": _download(cleanup.enter_context(grpc.insecure_channel(relay)), size),
            "invoke": _invoke_stream(stub, size),
        }
        for stream in streams.values():  # every path works before anything is timed
            _whole(stream, 3, size)()

        first_tier = Tier(
            samples=FIRST_CHUNK_SAMPLES_QUICK if config.quick else FIRST_CHUNK_SAMPLES,
            warmup=config.warmup,
            blocks=config.blocks,
        )
        first = run_self_timed(
            f"invoke_stream first chunk [self-timed: 1 chunk of {size} B]",
            [
                Benchmark("grpcio/first_chunk", _first_chunk(streams["one_hop"], size)),
                Benchmark(
                    "grpcio/first_chunk_two_hop",
                    _first_chunk(streams["two_hop"], size),
                    anchors=("grpcio/first_chunk",),
                ),
                Benchmark(
                    "invoke_stream/first_chunk",
                    _first_chunk(streams["invoke"], size),
                    anchors=("grpcio/first_chunk_two_hop", "grpcio/first_chunk"),
                ),
            ],
            first_tier,
        )
        chunks = CHUNKS_QUICK if config.quick else CHUNKS
        chunks_tier = CHUNKS_TIER_QUICK if config.quick else CHUNKS_TIER
        shape = f"{chunks}x{size}"
        whole = run_self_timed(
            f"invoke_stream chunks [self-timed: {chunks} chunks of {size} B]",
            [
                Benchmark(f"grpcio/chunks/{shape}", _whole(streams["one_hop"], chunks, size)),
                Benchmark(
                    f"grpcio/chunks_two_hop/{shape}",
                    _whole(streams["two_hop"], chunks, size),
                    anchors=(f"grpcio/chunks/{shape}",),
                ),
                Benchmark(
                    f"invoke_stream/chunks/{shape}",
                    _whole(streams["invoke"], chunks, size),
                    anchors=(f"grpcio/chunks_two_hop/{shape}", f"grpcio/chunks/{shape}"),
                ),
            ],
            chunks_tier,
        )
        params: dict[str, Any] = {
            "chunk_bytes": size,
            "first_chunk": {name: as_params(r, first_tier) for name, r in first.items()},
            "chunks": {name: as_params(r, chunks_tier) for name, r in whole.items()},
        }
        for entry in params["first_chunk"].values():
            entry.pop("samples", None)  # 10,000 raw samples do not belong in the params
        for name, entry in params["chunks"].items():
            entry["chunks"] = chunks
            entry["chunks_per_second_p50"] = round(chunks / (entry["p50"] / 1e9), 1)
            print(f"{name}: {entry['chunks_per_second_p50']} chunks/s at P50")
        print()

        one = f"1x{size}"
        yield [
            Benchmark(
                f"grpcio/stream/{one}",
                _whole(streams["one_hop"], 1, size),
                description="bare grpc.aio server stream of one chunk, one hop",
                params={"chunk_bytes": size},
            ),
            Benchmark(
                f"grpcio/stream_two_hop/{one}",
                _whole(streams["two_hop"], 1, size),
                anchors=(f"grpcio/stream/{one}",),
                description="the same stream relayed once: the two-hop floor",
                params={"chunk_bytes": size},
            ),
            Benchmark(
                f"invoke_stream/call/{one}",
                _whole(streams["invoke"], 1, size),
                anchors=(f"grpcio/stream_two_hop/{one}", f"grpcio/stream/{one}"),
                description="InvokeStream of a guest emitting one chunk, gateway -> executor",
                params=params,
            ),
        ]
