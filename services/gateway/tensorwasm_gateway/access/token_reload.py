"""Reloading the bearer tokens file without a restart.

The file named by `TENSORWASM_GATEWAY_TOKENS_FILE` is re-read on SIGHUP and whenever its
(mtime, size, inode) changes, checked every `TOKENS_RELOAD_SECONDS` (0: SIGHUP only).
The new table replaces the old one in one assignment, so a call sees either table,
never a mix; tokens from `TENSORWASM_GATEWAY_TOKENS` are merged in as at start.

A reload that would weaken the gateway by accident is refused, and the old table kept
with an error logged: the file cannot be read or is not UTF-8, any entry is malformed
(at start a malformed entry is dropped; on reload it more likely means a file caught
half-edited), or the result has no token while tokens are configured (that would turn
authentication off). Write the file whole and rename it into place to change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from tensorwasm_gateway.access.guard import Guard
from tensorwasm_gateway.access.tokens import TokenStore, parse_tokens

_log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class TokenReloader:
    """Re-reads the tokens file into `guard.tokens` (see the module docstring)."""

    def __init__(self, guard: Guard, path: Path, env_text: str = "") -> None:
        self._guard = guard
        self._path = path
        self._env_text = env_text
        self._seen = _signature(path)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def reload(self) -> bool:
        """Reads the file now; True when the new table was adopted."""
        self._seen = _signature(self._path)
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _log.error(
                "tokens file %s not reloaded (%s); keeping the current tokens", self._path, exc
            )
            return False
        errors: list[str] = []
        entries = parse_tokens("\n".join(t for t in (self._env_text, text) if t), errors)
        if errors:
            _log.error(
                "tokens file %s not reloaded: %d malformed entr%s (%s); keeping the current tokens",
                self._path,
                len(errors),
                "y" if len(errors) == 1 else "ies",
                "; ".join(errors[:5]),
            )
            return False
        if not entries and self._guard.tokens.enabled:
            _log.error(
                "tokens file %s not reloaded: it has no token, which would turn "
                "authentication off; keeping the current tokens",
                self._path,
            )
            return False
        store = TokenStore(entries)
        self._guard.tokens = store
        _log.info("bearer tokens reloaded", extra={"token_ids": list(store.token_ids)})
        return True

    def check(self) -> bool:
        """Reloads when the file changed since the last read; True when it did reload."""
        if _signature(self._path) == self._seen:
            return False
        return self.reload()

    def start(self, interval_seconds: float) -> None:
        """Reloads on SIGHUP, and polls the file every `interval_seconds` (> 0)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self.reload)
        if interval_seconds > 0:
            self._task = asyncio.create_task(self._poll(interval_seconds))

    async def _poll(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            self.check()

    async def close(self) -> None:
        """Stops polling and restores SIGHUP's default action."""
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
