"""The invoke-stream relay: an InvokeStream call as SSE frames or raw output bytes."""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2

from tensorwasm_gateway.http.compat_metrics import STREAMING_CHUNKS
from tensorwasm_gateway.http.documents import outcome_json
from tensorwasm_gateway.http.errors import dump, failure_envelope, rpc_error_response

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_frame(event: str, text: str) -> bytes:
    """One SSE frame; each line of `text` is a `data:` line (a client joins them with \\n)."""
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(text))
    return f"event: {event}\n{lines}\n".encode()


async def relay(call: Any, first: Any, function_id: str, sse: bool) -> AsyncIterator[bytes]:
    """SSE frames (`event: chunk` per emitted chunk, its text as `data:` lines; `event:
    output` per stdout/stderr write; then `event: end` with the result or `event:
    error`), or, raw, every chunk and output byte verbatim in the order produced."""
    # A chunk may end inside a UTF-8 sequence: the next one completes it.
    text = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        message = first
        while message is not grpc.aio.EOF:
            kind = message.WhichOneof("event")
            if kind == "chunk":
                STREAMING_CHUNKS.inc()
                yield sse_frame("chunk", text.decode(message.chunk)) if sse else message.chunk
            elif kind == "output":
                yield _output_frame(message.output) if sse else message.output.data
            elif sse:
                yield _outcome_frame(function_id, message.outcome)
            message = await call.read()
    except grpc.aio.AioRpcError as exc:
        if sse:
            yield b"event: error\ndata: " + bytes(rpc_error_response(exc).body) + b"\n\n"
    finally:
        call.cancel()


def _output_frame(chunk: invocation_pb2.OutputChunk) -> bytes:
    stderr = chunk.stream == invocation_pb2.OUTPUT_STREAM_STDERR
    data = {
        "stream": "stderr" if stderr else "stdout",
        "data": chunk.data.decode("utf-8", "replace"),
    }
    return b"event: output\ndata: " + dump(data) + b"\n\n"


def _outcome_frame(function_id: str, outcome: invocation_pb2.InvocationOutcome) -> bytes:
    if outcome.HasField("failure"):
        return b"event: error\ndata: " + dump(failure_envelope(function_id, outcome)) + b"\n\n"
    return b"event: end\ndata: " + dump(outcome_json(function_id, outcome)) + b"\n\n"
