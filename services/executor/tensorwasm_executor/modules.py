"""Compiled-module lookup: memory cache, else fetch from the snapshot store and compile once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from tensorwasm_common.digests import is_digest
from tensorwasm_common.errors import InvalidArgumentError

from tensorwasm_executor.sandbox import CompiledModule, Sandbox

FetchBlob = Callable[[str], Awaitable[bytes]]


class ModuleProvider:
    """Returns compiled modules by digest; concurrent first requests compile only once."""

    def __init__(self, sandbox: Sandbox, fetch: FetchBlob, compile_pool: Executor) -> None:
        self._sandbox = sandbox
        self._fetch = fetch
        self._pool = compile_pool
        self._inflight: dict[str, asyncio.Future[CompiledModule]] = {}

    async def get(self, digest: str) -> tuple[CompiledModule, bool]:
        """The compiled module for `digest` and whether it came from the cache."""
        if not is_digest(digest):
            raise InvalidArgumentError(
                "module_digest must be 64 lowercase hex digits",
                reason="INVALID_DIGEST",
                metadata={"field": "module_digest"},
            )
        cached = self._sandbox.lookup(digest)
        if cached is not None:
            return cached, True
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending), False
        future: asyncio.Future[CompiledModule] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            wasm = await self._fetch(digest)
            loop = asyncio.get_running_loop()
            module = await loop.run_in_executor(self._pool, self._sandbox.compile, digest, wasm)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[digest]
        future.set_result(module)
        return module, False
