"""Client-streaming RPCs on the server side: answering a refusal without losing it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# How long a refused upload keeps being read (and discarded) before its error is sent.
DRAIN_SECONDS = 5.0


async def drain(requests: AsyncIterator[object], *, seconds: float = DRAIN_SECONDS) -> None:
    """Reads and discards what the client still sends, until it half-closes or `seconds` pass.

    The error interceptor calls it before it sends the error of a client-streaming call.
    A server that ends such a call before the client has half-closed sends its status and
    then RST_STREAM; a grpc.aio client whose next write fails after that replaces the
    server's status with a bare INTERNAL (grpc/grpc#36066). Answering a refusal only once
    the client has finished sending keeps its code and reason intact; the bound keeps a
    client that never half-closes from holding the call open.
    """

    async def consume() -> None:
        async for _message in requests:
            pass

    with contextlib.suppress(Exception):
        await asyncio.wait_for(consume(), seconds)
