"""Waiting in asyncio tests: on a condition or an event, never on elapsed time. The bound
only turns a hang into a failure; it is never reached when the condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

WAIT_SECONDS = 60.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Runs one test's scenario on a fresh event loop."""
    asyncio.run(scenario())  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool]) -> None:
    """Waits until `predicate` holds (polled)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.002)


async def settled(event: asyncio.Event) -> None:
    """Waits until `event` is set."""
    async with asyncio.timeout(WAIT_SECONDS):
        await event.wait()
