"""`tensorwasm snapshot ls | get | rm | verify`: snapshot records of the store, as a tenant
(`snapshot save | restore`, through the gateway, are in `instance_snapshots`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import blake3
import grpc
import typer
from tensorwasm.common.v1.service_token import SERVICE_TOKEN_METADATA_KEY
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

from tensorwasm_client.cli.common import global_options
from tensorwasm_client.cli.progress import transfer_bar
from tensorwasm_client.errors import TensorWasmError, from_rpc_error
from tensorwasm_client.stack import DEFAULT_PORTS, LocalStack, stack_service_token
from tensorwasm_client.uploads import Progress


class KindName(StrEnum):
    """A record kind as the CLI spells it."""

    COMPILED_MODULE = "compiled_module"
    INSTANCE_IMAGE = "instance_image"
    KERNEL = "kernel"
    INSTANCE_STATE = "instance_state"


KIND_NAMES = {
    pb.SNAPSHOT_KIND_COMPILED_MODULE: KindName.COMPILED_MODULE,
    pb.SNAPSHOT_KIND_INSTANCE_IMAGE: KindName.INSTANCE_IMAGE,
    pb.SNAPSHOT_KIND_KERNEL: KindName.KERNEL,
    pb.SNAPSHOT_KIND_INSTANCE_STATE: KindName.INSTANCE_STATE,
}
_KINDS = {name: kind for kind, name in KIND_NAMES.items()}


@dataclass(frozen=True)
class StoreOption:
    """The `snapshot --store` option: the store's address, if given."""

    store: str | None


def store_options(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="TENSORWASM_STORE",
            help="snapshot store address (default: the local stack's)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Snapshot records of the store, as a tenant."""
    ctx.obj = StoreOption(store)


def store_address(store: str | None, data_dir: Path) -> str:
    """--store, else the running local stack's store, else the default port."""
    if store:
        return store
    recorded = LocalStack(data_dir).services().get("snapshot")
    return recorded.grpc_address if recorded else f"127.0.0.1:{DEFAULT_PORTS['snapshot']}"


def service_token(data_dir: Path) -> str | None:
    """The store's service token: TENSORWASM_SERVICE_TOKEN_FILE's, else the local stack's."""
    path = os.environ.get("TENSORWASM_SERVICE_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise TensorWasmError(
                "INVALID_ARGUMENT",
                "SERVICE_TOKEN_FILE_UNREADABLE",
                f"cannot read TENSORWASM_SERVICE_TOKEN_FILE ({path}): {exc}",
            ) from exc
    return stack_service_token(data_dir)


def to_json(snapshot: pb.Snapshot) -> dict[str, object]:
    """A record's metadata as the CLI prints it."""
    return {
        "id": snapshot.id,
        "kind": KIND_NAMES.get(snapshot.kind, str(snapshot.kind)),
        "tenant": snapshot.tenant,
        "engine_fingerprint": snapshot.engine_fingerprint,
        "source_digest": snapshot.source_digest,
        "variant": snapshot.variant,
        "payload_digest": snapshot.payload_digest,
        "payload_size_bytes": snapshot.payload_size_bytes,
        "record_digest": snapshot.record_digest,
        "record_size_bytes": snapshot.record_size_bytes,
        "create_time": snapshot.create_time.ToJsonString(),
        "format_version": snapshot.format_version,
        "signed": snapshot.signed,
    }


Metadata = tuple[tuple[str, str], ...]
SnapshotId = Annotated[str, typer.Argument(help="snapshot record id", metavar="ID")]


@contextmanager
def _store(ctx: typer.Context) -> Iterator[tuple[pb_grpc.SnapshotStoreServiceStub, Metadata]]:
    """A stub on the store and the call metadata; a refused call raises TensorWasmError."""
    options, store = global_options(ctx), ctx.find_object(StoreOption)
    metadata: Metadata = (("x-tensorwasm-tenant", options.tenant),) if options.tenant else ()
    token = service_token(options.data_dir)
    if token:  # the store is internal: it answers the fleet (and its operator) only
        metadata = (*metadata, (SERVICE_TOKEN_METADATA_KEY, token))
    with grpc.insecure_channel(
        store_address(store.store if store else None, options.data_dir),
        options=[("grpc.max_receive_message_length", 64 << 20)],
    ) as channel:
        try:
            yield pb_grpc.SnapshotStoreServiceStub(channel), metadata
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc


def ls(
    ctx: typer.Context,
    kind: Annotated[
        KindName | None, typer.Option(help="only records of this kind", show_default=False)
    ] = None,
    source: Annotated[str, typer.Option(help="only records of this module digest")] = "",
    limit: Annotated[int, typer.Option(help="at most this many (0: all)")] = 0,
) -> int:
    """List records, newest first."""
    with _store(ctx) as (stub, md):
        for shown, snapshot in enumerate(_all(stub, md, kind, source)):
            if limit and shown >= limit:
                break
            kind_name = KIND_NAMES.get(snapshot.kind, "?")
            print(
                f"{snapshot.id}  {kind_name:<15} {snapshot.source_digest[:16]}  "
                f"{snapshot.payload_size_bytes:>12}  {snapshot.engine_fingerprint[:16]}  "
                f"{snapshot.create_time.ToJsonString()}  {snapshot.variant}".rstrip()
            )
    return 0


def _all(
    stub: pb_grpc.SnapshotStoreServiceStub, md: Metadata, kind: KindName | None, source: str
) -> Iterator[pb.Snapshot]:
    token = ""
    while True:
        request = pb.ListSnapshotsRequest(
            page_size=100,
            page_token=token,
            kind=_KINDS[kind] if kind else 0,  # type: ignore[arg-type]
            source_digest=source,
        )
        page = stub.ListSnapshots(request, timeout=30, metadata=md)
        yield from page.snapshots
        token = page.next_page_token
        if not token:
            return


def get(
    ctx: typer.Context,
    snapshot_id: SnapshotId,
    output: Annotated[
        Path | None,
        typer.Option(help="also write the verified payload to this file", show_default=False),
    ] = None,
) -> int:
    """Show one record's metadata as JSON."""
    with _store(ctx) as (stub, md):
        if output:
            request = pb.GetSnapshotRequest(id=snapshot_id)
            size = stub.GetSnapshot(request, timeout=30, metadata=md).snapshot.payload_size_bytes
            with transfer_bar("downloading", size) as progress:
                snapshot, payload = _read(stub, snapshot_id, "", md, progress)
            output.write_bytes(payload)
        else:
            request = pb.GetSnapshotRequest(id=snapshot_id)
            snapshot = stub.GetSnapshot(request, timeout=30, metadata=md).snapshot
    print(json.dumps(to_json(snapshot), indent=2))
    return 0


def rm(ctx: typer.Context, snapshot_id: SnapshotId) -> int:
    """Delete a record."""
    with _store(ctx) as (stub, md):
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(id=snapshot_id), timeout=30, metadata=md)
    print(f"deleted {snapshot_id}")
    return 0


def verify(
    ctx: typer.Context,
    snapshot_id: SnapshotId,
    engine: Annotated[str, typer.Option(help="refuse unless made by this fingerprint")] = "",
) -> int:
    """Read a record's payload through the store."""
    with _store(ctx) as (stub, md):
        snapshot, payload = _read(stub, snapshot_id, engine, md)
    print(
        f"OK {snapshot.id}: {len(payload)} bytes, blake3 {snapshot.payload_digest}"
        + (", signed" if snapshot.signed else "")
    )
    return 0


def _read(
    stub: pb_grpc.SnapshotStoreServiceStub,
    snapshot_id: str,
    engine: str,
    md: Metadata,
    progress: Progress | None = None,
) -> tuple[pb.Snapshot, bytes]:
    """The payload, verified by the store and re-hashed here (BLAKE3, as the store does);
    `progress(received_bytes, total_bytes)` after each chunk."""
    request = pb.ReadSnapshotRequest(id=snapshot_id, expected_engine_fingerprint=engine)
    snapshot, chunks, received = None, [], 0
    for message in stub.ReadSnapshot(request, timeout=120, metadata=md):
        if message.HasField("snapshot"):
            snapshot = message.snapshot
        chunks.append(message.chunk)
        received += len(message.chunk)
        if progress is not None and snapshot is not None:
            progress(received, snapshot.payload_size_bytes)
    payload = b"".join(chunks)
    if snapshot is None or blake3.blake3(payload).hexdigest() != snapshot.payload_digest:
        raise TensorWasmError("DATA_LOSS", "SNAPSHOT_CORRUPT", "payload does not match its digest")
    return snapshot, payload
