"""Pre-initialised image lookup: the memory LRU, else this executor's image file (memory-mapped),
else the tenant's snapshot record in the store, else run init once and keep the image in all
three (file: temp file, fsync, rename, then its BLAKE3 digest beside it, checked before the
file is mapped; store: an INSTANCE_IMAGE record, variant = init export).

Images are keyed by (tenant, module digest, engine fingerprint, init export); the fingerprint
is this executor's, so it is part of the directory and of the store lookup, not of the memory
key. The tenant is part of every key: init may draw secrets (WASI random) or read what the
tenant granted, so two tenants deploying the same module never share an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Protocol

from cachetools import LRUCache
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm_common.errors import ServiceError
from tensorwasm_common.files import (
    evict_least_recent,
    remove_sealed,
    seal_is_intact,
    write_sealed,
)

from tensorwasm_executor.errors import ImageFormatError
from tensorwasm_executor.images.capture import capture_image
from tensorwasm_executor.scheduling import FairPool, pool_for
from tensorwasm_executor.wasm.instance_image import (
    InstanceImage,
    decode_image,
    encode_image,
    read_image_file,
)
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox

__all__ = ["ImageProvider", "ImageRecords"]

FetchBlob = Callable[[str], Awaitable[bytes]]
INSTANCE_IMAGE = snapshot_pb.SNAPSHOT_KIND_INSTANCE_IMAGE
_log = logging.getLogger(__name__)


class ImageRecords(Protocol):
    """What the provider needs of `tensorwasm_common.snapshot_client.SnapshotClient`."""

    async def find_snapshot(
        self,
        kind: snapshot_pb.SnapshotKind.ValueType,
        source_digest: str,
        engine_fingerprint: str,
        *,
        variant: str = "",
        tenant: str | None = None,
    ) -> snapshot_pb.Snapshot | None:
        """The tenant's record, None if it has none; raises on another fingerprint."""

    async def read_snapshot(
        self, snapshot_id: str, expected_engine_fingerprint: str, *, tenant: str | None = None
    ) -> bytes:
        """The record's verified payload."""

    async def create_snapshot(
        self,
        kind: snapshot_pb.SnapshotKind.ValueType,
        engine_fingerprint: str,
        source_digest: str,
        payload: bytes,
        *,
        variant: str = "",
        tenant: str | None = None,
    ) -> snapshot_pb.Snapshot:
        """Stores a record (replacing the tenant's older one of the same key)."""


class ImageProvider:
    """Returns the pre-initialised image of (module, init export); concurrent first
    requests run init only once."""

    def __init__(
        self,
        sandbox: Sandbox,
        fetch: FetchBlob,
        pool: Executor | FairPool,
        *,
        image_dir: Path | None = None,
        records: ImageRecords | None = None,
        cache_entries: int = 32,
        image_dir_max_bytes: int = 0,
    ) -> None:
        self._sandbox = sandbox
        self._fetch = fetch
        self._pool = pool
        self._records = records
        self._cache: LRUCache[tuple[str, str, str], InstanceImage] = LRUCache(maxsize=cache_entries)
        self._inflight: dict[tuple[str, str, str], asyncio.Future[InstanceImage]] = {}
        fingerprint = sandbox.engine_fingerprint
        self._dir = image_dir / fingerprint[:16] if image_dir is not None else None
        # The most bytes of image files kept (least recently used removed first); 0: no cap.
        self._max_dir_bytes = image_dir_max_bytes
        self.evicted = 0  # image files removed to stay under the cap
        # What each image came from, for tests and logs: init runs, files, store records.
        self.captured = 0
        self.loaded_from_file = 0
        self.loaded_from_store = 0

    def image_path(self, digest: str, init_export: str, tenant: str) -> Path | None:
        """Where the tenant's image of (digest, init export) is kept (None: no image
        directory)."""
        if self._dir is None:
            return None
        name = hashlib.sha256(f"{tenant}\0{init_export}".encode()).hexdigest()[:32]
        return self._dir / f"{digest}.{name}.twimg"

    async def get(self, module: CompiledModule, init_export: str, tenant: str) -> InstanceImage:
        """The image of `module` after `init_export`, for `tenant`'s store records.

        Raises:
            InitExportInvalidError, InitFailedError, PreinitStateUnsupportedError: from
                running init (nothing is cached then).
        """
        key = (tenant, module.digest, init_export)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[InstanceImage] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            image = await self._load_or_capture(module, init_export, tenant)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; nobody else must
            raise
        finally:
            del self._inflight[key]
        future.set_result(image)
        self._cache[key] = image
        return image

    async def _load_or_capture(
        self, module: CompiledModule, init_export: str, tenant: str
    ) -> InstanceImage:
        loop = asyncio.get_running_loop()
        pool = pool_for(self._pool, tenant)  # init runs as the tenant's work
        path = self.image_path(module.digest, init_export, tenant)
        image = await loop.run_in_executor(pool, self._read_file, path)
        if image is not None:
            self.loaded_from_file += 1
            return image
        payload = await self._from_store(module.digest, init_export, tenant)
        if payload is not None:
            image = await loop.run_in_executor(pool, self._keep, path, payload)
            if image is not None:
                self.loaded_from_store += 1
                return image
        wasm = await self._fetch(module.digest)
        image = await loop.run_in_executor(
            pool, capture_image, self._sandbox, module, wasm, init_export
        )
        self.captured += 1
        _log.info(
            "init %r of %s ran in %.1f ms; image of %d bytes",
            init_export, module.digest[:12], image.init_seconds * 1e3, image.memory_bytes,
        )  # fmt: skip
        payload = await loop.run_in_executor(pool, encode_image, image)
        await self._to_store(module.digest, init_export, tenant, payload)
        kept = await loop.run_in_executor(pool, self._keep, path, payload)
        return kept or image

    def _read_file(self, path: Path | None) -> InstanceImage | None:
        """The image from its file, or None (no file; a bad one is removed).

        The file's digest is checked first: a damaged block would otherwise start every
        instance of the module from silently wrong memory.
        """
        if path is None or not path.is_file():
            return None
        if not seal_is_intact(path):
            _log.warning("image %s does not match its digest; looking further", path)
            remove_sealed(path)
            return None
        try:
            image = self._checked(read_image_file(path))
        except (ImageFormatError, OSError) as exc:
            _log.warning("image %s refused (%s); looking further", path, exc)
            remove_sealed(path)
            return None
        with contextlib.suppress(OSError):  # recently used: evicted last
            now = time.time_ns()  # not the file system's coarser clock: orders close reads
            os.utime(path, ns=(now, now))
        return image

    def _checked(self, image: InstanceImage) -> InstanceImage:
        if image.engine_fingerprint != self._sandbox.engine_fingerprint:
            raise ImageFormatError("the image was made by another engine fingerprint")
        return image

    def _keep(self, path: Path | None, payload: bytes) -> InstanceImage | None:
        """Writes a payload to its file and maps it back (the memory then lives in the page
        cache, not the heap); without a directory, decodes it. None: the payload is bad."""
        try:
            if path is None:
                return self._checked(decode_image(payload))
            self._checked(decode_image(payload))
            write_sealed(path, payload)
            image = self._checked(read_image_file(path))  # mapped: eviction cannot hurt it
            if self._max_dir_bytes > 0:
                self.evicted += evict_least_recent(
                    path.parent, ".twimg", self._max_dir_bytes, keep=path
                )
            return image
        except ImageFormatError as exc:
            _log.warning("image payload refused: %s", exc)
            return None
        except OSError as exc:  # a full or read-only disk: keep it in memory only
            _log.warning("could not write image %s: %s", path, exc)
            return self._checked(decode_image(payload))

    async def _from_store(self, digest: str, init_export: str, tenant: str) -> bytes | None:
        """The tenant's image payload from the store, or None (none, another engine's, or
        the store failed: init then runs here)."""
        if self._records is None:
            return None
        fingerprint = self._sandbox.engine_fingerprint
        try:
            record = await self._records.find_snapshot(
                INSTANCE_IMAGE, digest, fingerprint, variant=init_export, tenant=tenant
            )
            if record is None:
                return None
            return await self._records.read_snapshot(record.id, fingerprint, tenant=tenant)
        except ServiceError as exc:
            _log.warning("no image from the store for %s (%s); running init", digest[:12], exc)
            return None

    async def _to_store(self, digest: str, init_export: str, tenant: str, payload: bytes) -> None:
        if self._records is None:
            return
        try:
            await self._records.create_snapshot(
                INSTANCE_IMAGE, self._sandbox.engine_fingerprint, digest, payload,
                variant=init_export, tenant=tenant,
            )  # fmt: skip
        except ServiceError as exc:  # other replicas will run init once more, no worse
            _log.warning("could not store the image of %s: %s", digest[:12], exc)
