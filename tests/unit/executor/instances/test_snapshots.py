"""InstanceSnapshots' refusals, with an in-memory record client: a record of another kind or
function, over the size guard, unsigned when a signature is required, a missing checkpoint
(nothing is read for a refused record); device state in the payload and its restore."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm_common.errors import (
    ServiceError,
    SnapshotFunctionMismatchError,
    SnapshotKindMismatchError,
    SnapshotNotFoundError,
    SnapshotSignatureError,
    SnapshotTooLargeError,
)
from tensorwasm_common.gpu_abi import AbiError, AbiFailure
from tensorwasm_executor.errors import ImageFormatError, InstanceStateUnsupportedError
from tensorwasm_executor.gpu.device_state import DeviceState
from tensorwasm_executor.instances.snapshots import (
    InstanceSnapshots,
    restore_device_state,
    variant_of,
)
from tensorwasm_executor.instances.state import decode_state, encode_state
from tensorwasm_executor.instances.table import InstanceTable
from tensorwasm_executor.scheduling import FairPool
from tensorwasm_executor.wasm.instance_image import InstanceImage, MemoryImage
from tensorwasm_executor.wasm.sandbox import Sandbox

DIGEST = "ab" * 32
INSTANCE = "1" * 32


class Records:
    """The record calls InstanceSnapshots makes, on a dict; counts payload reads."""

    def __init__(self) -> None:
        self.records: dict[str, pb.Snapshot] = {}
        self.reads = 0

    def add(self, **fields: Any) -> str:
        record = pb.Snapshot(
            id=f"snap_{len(self.records):032x}",
            kind=pb.SNAPSHOT_KIND_INSTANCE_STATE,
            source_digest=DIGEST,
            variant=variant_of("counter", INSTANCE, "save-0"),
            payload_size_bytes=100,
            signed=True,
        )
        for name, value in fields.items():
            setattr(record, name, value)
        self.records[record.id] = record
        return record.id

    async def get_snapshot(self, snapshot_id: str, *, tenant: str | None = None) -> pb.Snapshot:
        return self.records[snapshot_id]

    async def find_snapshot(self, *args: Any, **kwargs: Any) -> pb.Snapshot | None:
        return None

    async def read_snapshot(self, *args: Any, **kwargs: Any) -> bytes:
        self.reads += 1
        raise AssertionError("a refused record must not be read")


@pytest.fixture
def parts() -> Iterator[tuple[InstanceSnapshots, Records, InstanceTable]]:
    records = Records()
    table = InstanceTable(max_instances=4, max_per_tenant=4)
    pool = FairPool(2, 1, thread_name_prefix="test")
    with Sandbox(default_timeout_seconds=5.0) as sandbox:
        snapshots = InstanceSnapshots(sandbox, table, _no_fetch, records, pool)  # type: ignore[arg-type]
        yield snapshots, records, table
    pool.shutdown()


async def _no_fetch(digest: str) -> bytes:
    raise AssertionError("nothing is fetched for a refusal")


def load(snapshots: InstanceSnapshots, snapshot_id: str, **options: Any) -> object:
    return asyncio.run(
        snapshots.load(
            "acme", snapshot_id=snapshot_id, function_id=options.pop("function_id", "counter"),
            instance_id="", module_digest=options.pop("module_digest", DIGEST), **options,
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "options", "error"),
    [
        ({"kind": pb.SNAPSHOT_KIND_INSTANCE_IMAGE}, {}, SnapshotKindMismatchError),
        ({}, {"function_id": "other"}, SnapshotFunctionMismatchError),
        ({}, {"module_digest": "cd" * 32}, SnapshotFunctionMismatchError),
        ({"payload_size_bytes": 2048}, {"max_restore_bytes": 1024}, SnapshotTooLargeError),
        ({"signed": False}, {"require_signature": True}, SnapshotSignatureError),
    ],
    ids=["kind", "function", "module", "too-large", "unsigned"],
)
def test_a_record_that_does_not_fit_is_refused_unread(
    parts: tuple[InstanceSnapshots, Records, InstanceTable],
    fields: dict[str, Any],
    options: dict[str, Any],
    error: type[ServiceError],
) -> None:
    snapshots, records, _ = parts
    snapshot_id = records.add(**fields)
    with pytest.raises(error):
        load(snapshots, snapshot_id, **options)
    assert records.reads == 0


def test_a_missing_checkpoint_is_not_found(
    parts: tuple[InstanceSnapshots, Records, InstanceTable],
) -> None:
    snapshots, _, _ = parts
    with pytest.raises(SnapshotNotFoundError):
        load(snapshots, "")


def test_device_state_needs_a_gpu_session_to_restore_into() -> None:
    device = DeviceState(((0, b"ptx", "k"),), ((1, b"bytes"),), 1, 1)
    with pytest.raises(InstanceStateUnsupportedError) as caught:
        restore_device_state(None, device)
    assert caught.value.metadata["kind"] == "device"


def test_a_refused_device_restore_is_typed() -> None:
    class Session:
        def import_device_state(self, device: DeviceState, deadline: float) -> None:
            raise AbiFailure(AbiError.QUOTA_EXCEEDED, "over the tenant's GPU memory quota")

    device = DeviceState((), ((1, b"bytes"),), 0, 1)
    with pytest.raises(InstanceStateUnsupportedError) as caught:
        restore_device_state(SimpleNamespace(session=Session()), device)
    assert "quota" in caught.value.message


def test_the_payload_carries_device_state_beside_the_image() -> None:
    image = InstanceImage(DIGEST, "engine", "", 0.0, (MemoryImage("memory", 1, b"m" * 65536),), ())
    device = DeviceState(((3, b".entry k", "k"),), ((1, b"abc"), (4, b"")), 4, 4)
    plain, with_device = encode_state(image, None), encode_state(image, device)
    assert decode_state(plain)[1] is None
    decoded, restored = decode_state(with_device)
    assert restored == device
    assert bytes(decoded.memories[0].data) == b"m" * 65536
    for cut in (with_device[:20], with_device[: len(with_device) - 2]):
        with pytest.raises(ImageFormatError):
            decode_state(cut)
