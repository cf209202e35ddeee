"""`tensorwasm snapshot ls | get | rm | verify`: snapshot records of the store, as a tenant."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import grpc
from tensorwasm.common.v1.service_token import SERVICE_TOKEN_METADATA_KEY
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

from tensorwasm_client.client import TensorWasmError, _error
from tensorwasm_client.stack import DEFAULT_PORTS, LocalStack, stack_service_token

KIND_NAMES = {
    pb.SNAPSHOT_KIND_COMPILED_MODULE: "compiled_module",
    pb.SNAPSHOT_KIND_INSTANCE_IMAGE: "instance_image",
}
_KINDS = {name: kind for kind, name in KIND_NAMES.items()}


def add_parser(commands: Any) -> None:
    """Adds `snapshot` and its verbs to the CLI's subcommands."""
    snapshot = commands.add_parser("snapshot", help="snapshot records of the store")
    snapshot.add_argument(
        "--store",
        default=os.environ.get("TENSORWASM_STORE"),
        help="snapshot store address (env TENSORWASM_STORE; default: the local stack's)",
    )
    verbs = snapshot.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("ls", help="list records, newest first")
    ls.add_argument("--kind", choices=sorted(_KINDS), help="only records of this kind")
    ls.add_argument("--source", default="", help="only records of this module digest")
    ls.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    get = verbs.add_parser("get", help="show one record's metadata as JSON")
    get.add_argument("id")
    get.add_argument("--output", help="also write the verified payload to this file")
    rm = verbs.add_parser("rm", help="delete a record")
    rm.add_argument("id")
    verify = verbs.add_parser("verify", help="read a record's payload through the store")
    verify.add_argument("id")
    verify.add_argument("--engine", default="", help="refuse unless made by this fingerprint")


def store_address(args: argparse.Namespace) -> str:
    """--store, else the running local stack's store, else the default port."""
    if args.store:
        return str(args.store)
    recorded = LocalStack(args.data_dir).services().get("snapshot")
    return recorded.grpc_address if recorded else f"127.0.0.1:{DEFAULT_PORTS['snapshot']}"


def service_token(args: argparse.Namespace) -> str | None:
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
    return stack_service_token(args.data_dir)


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


def run(args: argparse.Namespace) -> int:
    """Runs one `snapshot` verb; TensorWasmError on a refused call."""
    metadata: Metadata = (("x-tensorwasm-tenant", args.tenant),) if args.tenant else ()
    token = service_token(args)
    if token:  # the store is internal: it answers the fleet (and its operator) only
        metadata = (*metadata, (SERVICE_TOKEN_METADATA_KEY, token))
    with grpc.insecure_channel(
        store_address(args), options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        try:
            return _VERBS[args.verb](stub, args, metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from exc


Metadata = tuple[tuple[str, str], ...]


def _ls(stub: pb_grpc.SnapshotStoreServiceStub, args: argparse.Namespace, md: Metadata) -> int:
    for shown, snapshot in enumerate(_all(stub, args, md)):
        if args.limit and shown >= args.limit:
            break
        kind = KIND_NAMES.get(snapshot.kind, "?")
        print(
            f"{snapshot.id}  {kind:<15} {snapshot.source_digest[:16]}  "
            f"{snapshot.payload_size_bytes:>12}  {snapshot.engine_fingerprint[:16]}  "
            f"{snapshot.create_time.ToJsonString()}  {snapshot.variant}".rstrip()
        )
    return 0


def _all(
    stub: pb_grpc.SnapshotStoreServiceStub, args: argparse.Namespace, md: Metadata
) -> Iterator[pb.Snapshot]:
    token = ""
    while True:
        request = pb.ListSnapshotsRequest(
            page_size=100,
            page_token=token,
            kind=_KINDS[args.kind] if args.kind else 0,  # type: ignore[arg-type]
            source_digest=args.source,
        )
        page = stub.ListSnapshots(request, timeout=30, metadata=md)
        yield from page.snapshots
        token = page.next_page_token
        if not token:
            return


def _get(stub: pb_grpc.SnapshotStoreServiceStub, args: argparse.Namespace, md: Metadata) -> int:
    if args.output:
        snapshot, payload = _read(stub, args.id, "", md)
        with open(args.output, "wb") as out:
            out.write(payload)
    else:
        request = pb.GetSnapshotRequest(id=args.id)
        snapshot = stub.GetSnapshot(request, timeout=30, metadata=md).snapshot
    print(json.dumps(to_json(snapshot), indent=2))
    return 0


def _rm(stub: pb_grpc.SnapshotStoreServiceStub, args: argparse.Namespace, md: Metadata) -> int:
    stub.DeleteSnapshot(pb.DeleteSnapshotRequest(id=args.id), timeout=30, metadata=md)
    print(f"deleted {args.id}")
    return 0


def _verify(stub: pb_grpc.SnapshotStoreServiceStub, args: argparse.Namespace, md: Metadata) -> int:
    snapshot, payload = _read(stub, args.id, args.engine, md)
    print(
        f"OK {snapshot.id}: {len(payload)} bytes, blake3 {snapshot.payload_digest}"
        + (", signed" if snapshot.signed else "")
    )
    return 0


def _read(
    stub: pb_grpc.SnapshotStoreServiceStub, snapshot_id: str, engine: str, md: Metadata
) -> tuple[pb.Snapshot, bytes]:
    """The payload, verified by the store and re-hashed here (BLAKE3, as the store does)."""
    request = pb.ReadSnapshotRequest(id=snapshot_id, expected_engine_fingerprint=engine)
    snapshot, chunks = None, []
    for message in stub.ReadSnapshot(request, timeout=120, metadata=md):
        if message.HasField("snapshot"):
            snapshot = message.snapshot
        chunks.append(message.chunk)
    payload = b"".join(chunks)
    if snapshot is None or blake3.blake3(payload).hexdigest() != snapshot.payload_digest:
        raise TensorWasmError("DATA_LOSS", "SNAPSHOT_CORRUPT", "payload does not match its digest")
    return snapshot, payload


_VERBS = {"ls": _ls, "get": _get, "rm": _rm, "verify": _verify}
