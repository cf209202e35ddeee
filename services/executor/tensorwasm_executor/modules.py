"""Compiled-module lookup: the memory LRU, else this executor's artifact file (memory-mapped
by `Module.deserialize_file`), else fetch from the snapshot store and compile, once, then
write the artifact (temp file, fsync, rename) so a restarted executor does not compile again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path

from tensorwasm_common.digests import is_digest
from tensorwasm_common.errors import InvalidArgumentError

from tensorwasm_executor.errors import InvalidWasmError
from tensorwasm_executor.sandbox import CompiledModule, Sandbox

FetchBlob = Callable[[str], Awaitable[bytes]]
_log = logging.getLogger(__name__)


class ModuleProvider:
    """Returns compiled modules by digest; concurrent first requests compile only once."""

    def __init__(
        self,
        sandbox: Sandbox,
        fetch: FetchBlob,
        compile_pool: Executor,
        *,
        artifact_dir: Path | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._fetch = fetch
        self._pool = compile_pool
        self._inflight: dict[str, asyncio.Future[CompiledModule]] = {}
        # Artifacts of one engine fingerprint live in their own directory.
        self._artifacts = (
            artifact_dir / sandbox.engine_fingerprint[:16] if artifact_dir is not None else None
        )
        self.compiled = 0  # modules this provider compiled (not loaded from an artifact)

    def artifact_path(self, digest: str) -> Path | None:
        """Where the compiled artifact of `digest` is kept (None: no artifact directory)."""
        return None if self._artifacts is None else self._artifacts / f"{digest}.cwasm"

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
            loop = asyncio.get_running_loop()
            module = await loop.run_in_executor(self._pool, self._load_artifact, digest)
            if module is None:
                wasm = await self._fetch(digest)
                module = await loop.run_in_executor(self._pool, self._compile, digest, wasm)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[digest]
        future.set_result(module)
        return module, False

    def _load_artifact(self, digest: str) -> CompiledModule | None:
        """The module from its artifact file, or None (no file, or one wasmtime refuses,
        which is then removed so the module is compiled again)."""
        path = self.artifact_path(digest)
        if path is None or not path.is_file():
            return None
        try:
            return self._sandbox.load_artifact(digest, path)
        except InvalidWasmError as exc:
            _log.warning("artifact %s refused (%s); compiling again", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _compile(self, digest: str, wasm: bytes) -> CompiledModule:
        module = self._sandbox.compile(digest, wasm)
        self.compiled += 1
        path = self.artifact_path(digest)
        if path is not None:
            try:
                _write_atomically(path, module.module.serialize())
            except OSError as exc:  # a full or read-only disk costs a recompile later, no more
                _log.warning("could not write artifact %s: %s", path, exc)
        return module


def _write_atomically(path: Path, data: bytes | bytearray) -> None:
    """Writes `data` to `path` so that a crash leaves the old state or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
