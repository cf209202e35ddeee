"""Snapshots of live instances in the store: capture one (on demand, or as a checkpoint of an
idle instance), and load one back as the image a restored instance starts from.

A snapshot is an INSTANCE_STATE record of the instance's tenant, variant
`{function_id}/{instance_id}/{label}`: label `checkpoint` (replaced by each checkpoint) or
`save-<16 hex>` (one per SnapshotInstance). Its payload is the instance's state in the image
format (`instances/state.py`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from cachetools import LRUCache
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm_common.errors import (
    ServiceError,
    SnapshotFunctionMismatchError,
    SnapshotKindMismatchError,
    SnapshotNotFoundError,
    SnapshotSignatureError,
    SnapshotTooLargeError,
)
from tensorwasm_common.gpu_abi import AbiFailure
from tensorwasm_common.snapshot_client import SnapshotClient

from tensorwasm_executor.errors import ImageFormatError, InstanceStateUnsupportedError
from tensorwasm_executor.gpu.device_state import DeviceState
from tensorwasm_executor.instances.state import (
    Exposure,
    capture_state,
    decode_state,
    encode_state,
    exposure_of,
    state_layout,
)
from tensorwasm_executor.instances.table import InstanceTable, LiveInstance
from tensorwasm_executor.scheduling import FairPool
from tensorwasm_executor.wasm.engine import CompiledModule
from tensorwasm_executor.wasm.instance_image import InstanceImage
from tensorwasm_executor.wasm.sandbox import Sandbox

__all__ = [
    "CHECKPOINT_LABEL",
    "InstanceSnapshots",
    "SavedState",
    "restore_device_state",
    "variant_of",
]

INSTANCE_STATE = snapshot_pb.SNAPSHOT_KIND_INSTANCE_STATE
CHECKPOINT_LABEL = "checkpoint"
EXPOSED_SUFFIX = "#exposed"  # the sandbox's cache key of a module's exposed copy
DEFAULT_MAX_STATE_BYTES = 256 << 20
# A capture waits this long for a running call to end before it gives up (INSTANCE_BUSY).
CAPTURE_WAIT_SECONDS = 30.0
# The deadline of copying device state back from (or to) the dispatcher.
DEVICE_SECONDS = 60.0
FetchBlob = Callable[[str], Awaitable[bytes]]
_log = logging.getLogger(__name__)


def variant_of(function_id: str, instance_id: str, label: str) -> str:
    """The record variant of a snapshot of `instance_id` of `function_id`."""
    return f"{function_id}/{instance_id}/{label}"


@dataclass(frozen=True)
class SavedState:
    """A snapshot stored: its record id, variant, payload size and whether it is signed."""

    snapshot_id: str
    variant: str
    state_size_bytes: int
    signed: bool


class InstanceSnapshots:
    """Captures live instances into the store and loads their snapshots back."""

    def __init__(
        self,
        sandbox: Sandbox,
        instances: InstanceTable,
        fetch: FetchBlob,
        records: SnapshotClient,
        workers: FairPool,
    ) -> None:
        self._sandbox, self._instances = sandbox, instances
        self._fetch, self._records, self._workers = fetch, records, workers
        self._exposures: LRUCache[str, Exposure] = LRUCache(maxsize=64)

    async def live_module(self, module: CompiledModule, tenant: str) -> CompiledModule:
        """The module a live instance of `module` runs on: the module itself when it exports
        all its memories and globals, else its exposed copy (`instances/state.py`),
        compiled once per executor and cached beside it."""
        exposure = await self._exposure(module.digest, tenant)
        if exposure.exposed_wasm is None:
            return module
        key = module.digest + EXPOSED_SUFFIX
        cached = self._sandbox.lookup(key)
        if cached is not None:
            return cached
        return await asyncio.wrap_future(
            self._workers.submit(
                tenant, self._sandbox.compile, module.digest, exposure.exposed_wasm, cache_key=key
            )
        )

    async def _exposure(self, digest: str, tenant: str) -> Exposure:
        exposure = self._exposures.get(digest)
        if exposure is None:
            wasm = await self._fetch(digest)
            exposure = await asyncio.wrap_future(self._workers.submit(tenant, exposure_of, wasm))
            self._exposures[digest] = exposure
        return exposure

    async def snapshot(
        self, tenant: str, instance_id: str, *, max_state_bytes: int = 0
    ) -> SavedState:
        """Captures the tenant's instance between calls into a new record.

        Raises:
            InstanceNotFoundError: no such live instance of the tenant.
            InstanceStateUnsupportedError: state a snapshot cannot carry.
            SnapshotTooLargeError: more state than `max_state_bytes`.
        """
        live = self._instances.checkout(instance_id, tenant)
        try:
            label = f"save-{secrets.token_hex(8)}"
            return await self._capture(live, label, max_state_bytes or DEFAULT_MAX_STATE_BYTES)
        finally:
            self._instances.checkin(live)

    async def checkpoint_due(self) -> int:
        """Checkpoints every idle instance whose checkpoint is due; -> how many were taken."""
        taken = 0
        for live in self._instances.due_checkpoints():
            calls: int | None = live.calls
            try:
                await self._capture(live, CHECKPOINT_LABEL, DEFAULT_MAX_STATE_BYTES)
                taken += 1
            except (ServiceError, wasmtime.WasmtimeError) as exc:
                calls = None
                _log.warning("checkpoint of instance %s failed: %s", live.id, exc)
            finally:
                self._instances.checkpointed(live, calls)
        return taken

    async def forget_checkpoint(self, live: LiveInstance) -> None:
        """Deletes the instance's checkpoint record (it was deleted or expired); best effort."""
        if not live.checkpoint_seconds:
            return
        variant = variant_of(live.function_id, live.id, CHECKPOINT_LABEL)
        try:
            record = await self._records.find_snapshot(
                INSTANCE_STATE, live.module_digest, self._sandbox.engine_fingerprint,
                variant=variant, tenant=live.tenant,
            )  # fmt: skip
            if record is not None:
                await self._records.delete_snapshot(record.id, tenant=live.tenant)
        except ServiceError as exc:
            _log.warning("could not delete the checkpoint of instance %s: %s", live.id, exc)

    async def _capture(self, live: LiveInstance, label: str, max_state_bytes: int) -> SavedState:
        host_state: Any = live.resident.host_state
        session = getattr(host_state, "session", None)
        module = live.resident.module
        skip = [name for name in module.cap_counters if name is not None]
        layout = state_layout(module, await self._exposure(module.digest, live.tenant), skip)
        fingerprint = self._sandbox.engine_fingerprint

        def capture(store: wasmtime.Store, instance: Any) -> bytes:
            image = capture_state(
                store, instance, layout, source_digest=module.digest,
                engine_fingerprint=fingerprint,
            )  # fmt: skip
            device = None
            if session is not None and session.holds_device_state:
                try:
                    device = session.export_device_state(time.monotonic() + DEVICE_SECONDS)
                except AbiFailure as failure:
                    raise InstanceStateUnsupportedError(
                        f"the instance's device buffers could not be read back: {failure.message}",
                        metadata={"kind": "device", "index": "-1"},
                    ) from None
            return encode_state(image, device)

        def between_calls() -> bytes:
            return live.resident.between_calls(capture, CAPTURE_WAIT_SECONDS)

        payload = await asyncio.wrap_future(self._workers.submit(live.tenant, between_calls))
        if len(payload) > max_state_bytes:
            raise SnapshotTooLargeError.of(len(payload), max_state_bytes, "the instance's state")
        variant = variant_of(live.function_id, live.id, label)
        record = await self._records.create_snapshot(
            INSTANCE_STATE, fingerprint, module.digest, payload, variant=variant,
            tenant=live.tenant,
        )  # fmt: skip
        return SavedState(record.id, variant, record.payload_size_bytes, record.signed)

    async def load(
        self,
        tenant: str,
        *,
        snapshot_id: str,
        function_id: str,
        instance_id: str,
        module_digest: str,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
    ) -> tuple[str, InstanceImage, DeviceState | None]:
        """The state a restored instance starts from: the record `snapshot_id`, or (empty)
        the checkpoint of `function_id`/`instance_id`; -> (record id, its image, its device
        state or None).

        Raises:
            SnapshotNotFoundError: no such record (or no checkpoint).
            SnapshotKindMismatchError: not an instance state.
            SnapshotFunctionMismatchError: of another function or module.
            SnapshotTooLargeError: more state than `max_restore_bytes`.
            SnapshotSignatureError: unsigned while a signature is required.
            FingerprintMismatchError: made by another engine.
        """
        fingerprint = self._sandbox.engine_fingerprint
        if snapshot_id:
            record = await self._records.get_snapshot(snapshot_id, tenant=tenant)
        else:
            variant = variant_of(function_id, instance_id, CHECKPOINT_LABEL)
            found = await self._records.find_snapshot(
                INSTANCE_STATE, module_digest, fingerprint, variant=variant, tenant=tenant
            )
            if found is None:
                raise SnapshotNotFoundError(
                    f"instance {instance_id} has no checkpoint",
                    metadata={"instance_id": instance_id},
                )
            record = found
        _check_record(record, function_id, module_digest)
        limit = max_restore_bytes or DEFAULT_MAX_STATE_BYTES
        if record.payload_size_bytes > limit:
            raise SnapshotTooLargeError.of(record.payload_size_bytes, limit, "the snapshot's state")
        if require_signature and not record.signed:
            raise SnapshotSignatureError(
                "the snapshot is unsigned; a signature is required", metadata={"id": record.id}
            )
        payload = await self._records.read_snapshot(record.id, fingerprint, tenant=tenant)
        try:
            image, device = decode_state(payload)
        except ImageFormatError as exc:
            raise SnapshotKindMismatchError(
                f"the snapshot's payload is not an instance state: {exc.message}",
                metadata={"expected": "instance_state", "actual": "unreadable"},
            ) from None
        return record.id, image, device


def restore_device_state(host_state: Any, device: DeviceState) -> None:
    """Loads a snapshot's kernels and buffers into a restored instance's `wasi:cuda`
    session (on its worker, before anyone can call it).

    Raises:
        InstanceStateUnsupportedError: the instance has no GPU session here, or the
            dispatcher refused a kernel or buffer (e.g. the tenant's GPU memory quota).
    """
    session = getattr(host_state, "session", None)
    if session is None:
        raise InstanceStateUnsupportedError(
            "the snapshot holds device state, and the instance has no GPU session here",
            metadata={"kind": "device", "index": "-1"},
        )
    try:
        session.import_device_state(device, time.monotonic() + DEVICE_SECONDS)
    except AbiFailure as failure:
        raise InstanceStateUnsupportedError(
            f"the snapshot's device state could not be restored: {failure.message}",
            metadata={"kind": "device", "index": "-1"},
        ) from None


def _check_record(record: snapshot_pb.Snapshot, function_id: str, module_digest: str) -> None:
    if record.kind != INSTANCE_STATE:
        raise SnapshotKindMismatchError(
            "the snapshot is not an instance state",
            metadata={
                "expected": "instance_state",
                "actual": snapshot_pb.SnapshotKind.Name(record.kind),
            },
        )
    recorded_function = record.variant.partition("/")[0]
    if recorded_function != function_id or record.source_digest != module_digest:
        raise SnapshotFunctionMismatchError(
            f"the snapshot is of function {recorded_function!r} with module "
            f"{record.source_digest[:12]}, not {function_id!r} with {module_digest[:12]}",
            metadata={
                "function": function_id,
                "expected": module_digest,
                "actual": record.source_digest,
            },
        )
