"""Compiled-module lookup: the memory LRU, else this executor's artifact file (memory-mapped
by `Module.deserialize_file` once its BLAKE3 digest, kept beside it, matches), else the
fleet's artifact in the snapshot store (a COMPILED_MODULE record of this engine fingerprint,
written to the local file first), else fetch the wasm and compile, once, then write the
artifact (temp file, fsync, rename; then its digest) and share it through the store (best
effort) so no replica compiles it again.

The artifact directory is bounded (`artifact_dir_max_bytes`): after each write the least
recently used files go (a load refreshes a file's mtime), so the artifacts of modules nobody
calls any more, deleted functions' among them, do not pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path

from tensorwasm_common.digests import is_digest
from tensorwasm_common.errors import (
    FingerprintMismatchError,
    InvalidDigestError,
    InvalidWasmError,
    ServiceError,
)
from tensorwasm_common.files import (
    evict_least_recent,
    remove_sealed,
    seal_is_intact,
    write_sealed,
)
from tensorwasm_common.snapshot_client import ARTIFACT_TENANT, COMPILED_MODULE, SnapshotClient
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_executor.scheduling import FairPool, pool_for
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox

FetchBlob = Callable[[str], Awaitable[bytes]]
__all__ = ["ARTIFACT_TENANT", "ModuleProvider"]
_log = logging.getLogger(__name__)


class ModuleProvider:
    """Returns compiled modules by digest; concurrent first requests compile only once."""

    def __init__(
        self,
        sandbox: Sandbox,
        fetch: FetchBlob,
        compile_pool: Executor | FairPool,
        *,
        artifact_dir: Path | None = None,
        artifact_dir_max_bytes: int = 0,
        snapshots: SnapshotClient | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._snapshots = snapshots if artifact_dir is not None else None
        self._fetch = fetch
        self._pool = compile_pool
        self._max_artifact_bytes = artifact_dir_max_bytes
        self._inflight: dict[str, asyncio.Future[CompiledModule]] = {}
        # Artifacts of one engine fingerprint live in their own directory.
        self._artifacts = (
            artifact_dir / sandbox.engine_fingerprint[:16] if artifact_dir is not None else None
        )
        self.compiled = 0  # modules this provider compiled (not loaded from an artifact)
        self.restored = 0  # artifacts it took from the snapshot store
        self.shared = 0  # artifacts it put into the snapshot store
        self.evicted = 0  # artifact files it removed to stay under the cap

    def artifact_path(self, digest: str) -> Path | None:
        """Where the compiled artifact of `digest` is kept (None: no artifact directory)."""
        return None if self._artifacts is None else self._artifacts / f"{digest}.cwasm"

    async def get(self, digest: str, tenant: str = DEFAULT_TENANT) -> tuple[CompiledModule, bool]:
        """The compiled module for `digest` and whether it came from the cache.

        Loading and compiling run on the compile pool as `tenant`'s work: with a
        `FairPool`, one tenant's large compile does not hold back another's.
        """
        if not is_digest(digest):
            raise InvalidDigestError(
                "module_digest must be 64 lowercase hex digits", metadata={"field": "module_digest"}
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
            pool = pool_for(self._pool, tenant)
            loaded = await loop.run_in_executor(pool, self._load_artifact, digest)
            if loaded is None:
                loaded = await self._restore(digest, pool)
            if loaded is None:
                wasm = await self._fetch(digest)
                module, artifact = await loop.run_in_executor(pool, self._compile, digest, wasm)
                await self._share(digest, artifact)
            else:
                module = loaded
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[digest]
        future.set_result(module)
        return module, False

    def _load_artifact(self, digest: str) -> CompiledModule | None:
        """The module from its artifact file, or None (no file; or one whose digest is
        missing or does not match, or that wasmtime refuses: it is then removed and the
        module is compiled again).

        wasmtime maps serialized code as trusted machine code, so a damaged file would crash
        the executor: the digest is checked before the file is handed to wasmtime.
        """
        path = self.artifact_path(digest)
        if path is None or not path.is_file():
            return None
        if not seal_is_intact(path):
            _log.warning("artifact %s does not match its digest; compiling again", path)
            remove_sealed(path)
            return None
        try:
            module = self._sandbox.load_artifact(digest, path)
        except InvalidWasmError as exc:
            _log.warning("artifact %s refused (%s); compiling again", path, exc)
            remove_sealed(path)
            return None
        with contextlib.suppress(OSError):  # recently used: evicted last
            os.utime(path)
        return module

    async def _restore(self, digest: str, pool: Executor) -> CompiledModule | None:
        """The module from the store's artifact of this engine fingerprint, via the local
        file; None (and the caller compiles) when there is none, it is of another
        fingerprint, the store fails, or wasmtime refuses it."""
        path = self.artifact_path(digest)
        if self._snapshots is None or path is None:
            return None
        fingerprint = self._sandbox.engine_fingerprint
        try:
            found = await self._snapshots.find_snapshot(
                COMPILED_MODULE, digest, fingerprint, tenant=ARTIFACT_TENANT
            )
            if found is None:
                return None
            payload = await self._snapshots.read_snapshot(
                found.id, fingerprint, tenant=ARTIFACT_TENANT
            )
        except FingerprintMismatchError:
            _log.info("store artifact of %s is of another engine; compiling", digest)
            return None
        except ServiceError as exc:
            _log.warning("store artifact of %s unavailable (%s); compiling", digest, exc.reason)
            return None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, self._keep, path, payload)
        module = await loop.run_in_executor(pool, self._load_artifact, digest)
        if module is not None:
            self.restored += 1
        return module

    async def _share(self, digest: str, artifact: bytes | None) -> None:
        """Puts a freshly compiled artifact into the store; a failure is logged, not raised."""
        if self._snapshots is None or artifact is None:
            return
        try:
            await self._snapshots.create_snapshot(
                COMPILED_MODULE,
                self._sandbox.engine_fingerprint,
                digest,
                artifact,
                tenant=ARTIFACT_TENANT,
            )
        except ServiceError as exc:
            _log.warning("could not share the artifact of %s: %s", digest, exc)
            return
        self.shared += 1

    def _compile(self, digest: str, wasm: bytes) -> tuple[CompiledModule, bytes | None]:
        module = self._sandbox.compile(digest, wasm)
        self.compiled += 1
        path = self.artifact_path(digest)
        if path is None:
            return module, None
        artifact = bytes(module.module.serialize())
        try:
            self._keep(path, artifact)
        except OSError as exc:  # a full or read-only disk costs a recompile later, no more
            _log.warning("could not write artifact %s: %s", path, exc)
        return module, artifact

    def _keep(self, path: Path, artifact: bytes) -> None:
        """Writes an artifact file (and its digest), then evicts to stay under the cap."""
        write_sealed(path, artifact)
        if self._max_artifact_bytes > 0:
            self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        """Removes the least recently used artifact files (never `keep`) until the directory
        holds at most `artifact_dir_max_bytes`."""
        self.evicted += evict_least_recent(
            keep.parent, ".cwasm", self._max_artifact_bytes, keep=keep
        )
