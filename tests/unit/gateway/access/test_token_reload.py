"""Unit tests for tensorwasm_gateway.access.token_reload: tokens re-read without a restart."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest
from tensorwasm_common.errors import ServiceError
from tensorwasm_gateway.access.audit import AuditLog
from tensorwasm_gateway.access.guard import Guard
from tensorwasm_gateway.access.ratelimit import BucketConfig, ConcurrencyCaps, RateLimiter
from tensorwasm_gateway.access.token_reload import TokenReloader
from tensorwasm_gateway.access.tokens import TokenStore, parse_tokens

OLD = "old-token-0123456789abcdef"
NEW = "new-token-0123456789abcdef"


def guard_with(text: str) -> Guard:
    limiter = RateLimiter(BucketConfig(0, 0), BucketConfig(0, 0))
    return Guard(TokenStore(parse_tokens(text)), limiter, ConcurrencyCaps({}), AuditLog(None))


def accepts(guard: Guard, token: str) -> bool:
    try:
        guard.authenticate([("authorization", f"Bearer {token}")])
    except ServiceError as exc:
        assert exc.reason == "UNAUTHENTICATED"
        return False
    return True


def replace_file(path: Path, text: str | bytes) -> None:
    """Writes whole and renames into place, as an operator should."""
    temp = path.with_suffix(".tmp")
    if isinstance(text, bytes):
        temp.write_bytes(text)
    else:
        temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"{OLD}:tenant=acme\n")
    return path


def test_a_changed_file_replaces_the_table(tokens_file: Path) -> None:
    guard = guard_with(tokens_file.read_text())
    reloader = TokenReloader(guard, tokens_file)
    assert not reloader.check()  # unchanged since start: nothing read
    replace_file(tokens_file, f"# rotated\n{NEW}:tenant=acme,beta\n")
    assert reloader.check()
    assert accepts(guard, NEW)
    assert not accepts(guard, OLD)
    principal = guard.authenticate([("authorization", f"Bearer {NEW}")])
    assert principal.scope.tenants == frozenset({"acme", "beta"})
    assert not reloader.check()  # read once per change


def test_env_tokens_stay_merged(tokens_file: Path) -> None:
    env = "env-token-0123456789abcdef:tenant=*"
    guard = guard_with(env + "\n" + tokens_file.read_text())
    reloader = TokenReloader(guard, tokens_file, env)
    replace_file(tokens_file, f"{NEW}:tenant=acme\n")
    assert reloader.reload()
    assert accepts(guard, NEW)
    assert accepts(guard, "env-token-0123456789abcdef")
    assert not accepts(guard, OLD)


@pytest.mark.parametrize(
    "content",
    [
        f"{NEW}:tenant=acme\n{NEW}-2:tenant=Not_Valid!\n",  # one malformed entry
        f"{NEW}:color=red\n",  # unknown key
        "# every token removed\n",  # would turn auth off
        "",
        b"\xff\xfe not utf-8",
    ],
)
def test_a_bad_file_keeps_the_old_table_and_logs_an_error(
    tokens_file: Path, content: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    guard = guard_with(tokens_file.read_text())
    before = guard.tokens
    reloader = TokenReloader(guard, tokens_file)
    replace_file(tokens_file, content)
    with caplog.at_level(logging.ERROR, logger="tensorwasm_gateway.access.token_reload"):
        assert not reloader.check()
    assert guard.tokens is before
    assert accepts(guard, OLD)
    assert not accepts(guard, NEW)
    assert any(
        r.levelno == logging.ERROR and "keeping the current tokens" in r.getMessage()
        for r in caplog.records
    )
    # a fixed file is adopted on the next change
    replace_file(tokens_file, f"{NEW}:tenant=acme\n")
    assert reloader.check()
    assert accepts(guard, NEW)


def test_a_missing_file_keeps_the_old_table(tokens_file: Path) -> None:
    guard = guard_with(tokens_file.read_text())
    reloader = TokenReloader(guard, tokens_file)
    tokens_file.unlink()
    assert not reloader.reload()
    assert accepts(guard, OLD)


def test_dev_mode_gains_tokens_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("")
    guard = guard_with("")
    assert not guard.tokens.enabled
    reloader = TokenReloader(guard, path)
    replace_file(path, f"{NEW}:tenant=*\n")
    assert reloader.check()
    assert guard.tokens.enabled
    assert not accepts(guard, "anything-else-0123456789")


def rewrite_unnoticed(path: Path, text: str) -> None:
    """Rewrites in place with the same size and mtime: only SIGHUP can see the change."""
    stat = path.stat()
    assert len(text) == stat.st_size
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_sighup_and_the_poll_reload(tokens_file: Path) -> None:
    guard = guard_with(tokens_file.read_text())

    async def scenario() -> None:
        reloader = TokenReloader(guard, tokens_file)
        reloader.start(0)  # SIGHUP only
        try:
            rewrite_unnoticed(tokens_file, f"{NEW}:tenant=acme\n")
            await asyncio.sleep(0.05)
            assert accepts(guard, OLD)  # no poll
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(6000):  # up to 60 s: a bound against a hang, not a timing
                await asyncio.sleep(0.01)
                if accepts(guard, NEW):
                    break
            assert accepts(guard, NEW)
            assert not accepts(guard, OLD)
        finally:
            await reloader.close()

        polled = TokenReloader(guard, tokens_file)
        polled.start(0.02)
        try:
            replace_file(tokens_file, f"{OLD}:tenant=acme\n")
            for _ in range(6000):  # up to 60 s: a bound against a hang, not a timing
                await asyncio.sleep(0.01)
                if accepts(guard, OLD):
                    break
            assert accepts(guard, OLD)
            assert not accepts(guard, NEW)
        finally:
            await polled.close()

    asyncio.run(scenario())
