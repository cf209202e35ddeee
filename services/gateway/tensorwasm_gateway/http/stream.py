"""The invoke-stream relay: an InvokeStream call as SSE frames or raw output bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2

from tensorwasm_gateway.http.documents import outcome_json
from tensorwasm_gateway.http.errors import dump, failure_envelope, rpc_error_response


async def relay(call: Any, first: Any, function_id: str, sse: bool) -> AsyncIterator[bytes]:
    """SSE frames (`event: chunk` per output chunk, then `event: end` with the result or
    `event: error`), or the raw output bytes."""
    try:
        message = first
        while message is not grpc.aio.EOF:
            if message.HasField("output"):
                chunk = message.output
                if not sse:
                    yield chunk.data
                else:
                    stderr = chunk.stream == invocation_pb2.OUTPUT_STREAM_STDERR
                    data = {
                        "stream": "stderr" if stderr else "stdout",
                        "data": chunk.data.decode("utf-8", "replace"),
                    }
                    yield b"event: chunk\ndata: " + dump(data) + b"\n\n"
            elif sse:
                outcome = message.outcome
                if outcome.HasField("failure"):
                    failure = dump(failure_envelope(function_id, outcome))
                    yield b"event: error\ndata: " + failure + b"\n\n"
                else:
                    result = dump(outcome_json(function_id, outcome))
                    yield b"event: end\ndata: " + result + b"\n\n"
            message = await call.read()
    except grpc.aio.AioRpcError as exc:
        if sse:
            yield b"event: error\ndata: " + bytes(rpc_error_response(exc).body) + b"\n\n"
    finally:
        call.cancel()
