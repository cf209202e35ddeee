"""A bare grpc.aio echo server (optionally relaying one hop), and its launcher, for bench floors."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

# The services run grpc.aio servers on plain asyncio, so the floor does too: same framework, no
# interceptors, no application logic. Generic handlers with no (de)serializers move raw bytes.
SERVICE = "tensorwasm.bench.v1.Echo"
METHOD = "Unary"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
# Streaming floors for bulk transfers: Upload drains a client stream and answers its byte
# count (8 bytes, little-endian); Download answers a request of 16 bytes (total, chunk size,
# little-endian u64s) with that many bytes in chunks of that size. A relay (`--forward`)
# relays Unary and Download (each chunk as it arrives: the two-hop floor of a stream);
# Upload stays local.
UPLOAD_METHOD = f"/{SERVICE}/Upload"
DOWNLOAD_METHOD = f"/{SERVICE}/Download"
# The floor of a relay that carries its calls as frames of one stream (as the gateway does
# to the executor): Frames echoes each message of a bidirectional stream; a relay with
# `--frames` forwards each Unary call as one message of one such stream, prefixed with an
# 8-byte call id, and answers the call with the echo that carries its id.
FRAMES_METHOD = f"/{SERVICE}/Frames"


async def _frames(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
    while (message := await context.read()) is not grpc.aio.EOF:
        await context.write(message)


class _FramedRelay:
    """Unary calls relayed as frames of one stream to the leaf (see FRAMES_METHOD)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call: Any = channel.stream_stream(FRAMES_METHOD)()
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._ids = iter(range(1, 1 << 63))
        self._lock = asyncio.Lock()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while (message := await self._call.read()) is not grpc.aio.EOF:
            self._pending.pop(message[:8]).set_result(message[8:])

    async def __call__(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        key = next(self._ids).to_bytes(8, "little")
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        async with self._lock:
            await self._call.write(key + request)
        return await future


async def _upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    total = 0
    async for chunk in requests:
        total += len(chunk)
    return total.to_bytes(8, "little")


async def _download(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    total, chunk_bytes = (
        int.from_bytes(request[:8], "little"),
        int.from_bytes(request[8:], "little"),
    )
    chunk = bytes(chunk_bytes)
    for start in range(0, total, chunk_bytes):
        yield chunk[: min(chunk_bytes, total - start)]


# The same per-call deadline the harness puts on every call (it is sent as grpc-timeout).
FORWARD_TIMEOUT_SECONDS = 30.0


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.echo_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--forward", default="", metavar="HOST:PORT", help="relay each call to this echo server"
    )
    parser.add_argument(
        "--frames", action="store_true", help="relay Unary as frames of one stream (--forward)"
    )
    return parser.parse_args(argv)


async def _serve(host: str, port: int, forward: str, frames: bool = False) -> None:
    downstream: grpc.aio.Channel | None = None
    download: Any = _download
    if forward:
        downstream = grpc.aio.insecure_channel(forward)
        relay = downstream.unary_unary(FULL_METHOD)
        relay_download = downstream.unary_stream(DOWNLOAD_METHOD)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            reply: bytes = await relay(request, timeout=FORWARD_TIMEOUT_SECONDS)
            return reply

        if frames:
            handle = _FramedRelay(downstream).__call__  # type: ignore[assignment]

        async def relayed_download(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            async for chunk in relay_download(request, timeout=FORWARD_TIMEOUT_SECONDS):
                yield chunk

        download = relayed_download

    else:

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    METHOD: grpc.unary_unary_rpc_method_handler(handle),
                    "Upload": grpc.stream_unary_rpc_method_handler(_upload),
                    "Download": grpc.unary_stream_rpc_method_handler(download),
                    "Frames": grpc.stream_stream_rpc_method_handler(_frames),
                },
            ),
        )
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"echo_server: cannot listen on {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The launcher reads exactly one line: the bound port.
    print(bound, flush=True)
    await stop.wait()
    await server.stop(0.5)
    if downstream is not None:
        await downstream.close()


@contextlib.contextmanager
def running_echo_server(
    log_path: Path, *, forward: str = "", frames: bool = False, timeout_seconds: float = 30.0
) -> Iterator[str]:
    """Starts an echo server in its own OS process, yields its address, stops it on exit."""
    repo_root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "tests.bench.echo_server", "--port", "0"]
    if forward:
        command += ["--forward", forward]
    if frames:
        command.append("--frames")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=repo_root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield f"127.0.0.1:{_read_port(process, log_path, timeout_seconds)}"
    finally:
        _stop(process)


def _read_port(process: subprocess.Popen[bytes], log_path: Path, timeout_seconds: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"echo server did not report its port in {timeout_seconds}s")
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if readable:
            break
    line = process.stdout.readline().strip()
    if not line.isdigit():
        log = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"echo server failed to start (exit {process.poll()}):\n{log}")
    return int(line)


def _stop(process: subprocess.Popen[bytes], grace_seconds: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Serves until SIGTERM/SIGINT, after printing the bound port on stdout."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.forward, args.frames))


if __name__ == "__main__":
    main()
