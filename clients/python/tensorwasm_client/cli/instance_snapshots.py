"""`tensorwasm snapshot save | restore`: snapshots of live instances, through the gateway."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from tensorwasm_client.cli.common import client_for

DEFAULT_MAX_RESTORE_BYTES = 256 << 20
# Exit status of a refusal made here, before anything was sent (the original CLI's
# LOCAL_VALIDATION_FAILED).
LOCAL_VALIDATION_FAILED = 2
_SNAPSHOT_ID = re.compile(r"(snapshots/)?snap_[0-9a-f]{32}")

MaxRestoreBytes = Annotated[
    int,
    typer.Option(
        "--max-restore-bytes",
        min=1,
        help="refuse a snapshot holding more instance state (or a larger file) than this",
    ),
]


def save(
    ctx: typer.Context,
    instance: Annotated[str, typer.Option("--instance", help="instances/<id>", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="also write the snapshot's record file here"),
    ] = None,
    max_restore_bytes: MaxRestoreBytes = DEFAULT_MAX_RESTORE_BYTES,
) -> int:
    """Snapshot a live instance between calls into the store (and, with -o, a file).

    Prints the snapshot as JSON: its name (`snapshots/<id>`), function, instance, sizes.
    """
    with client_for(ctx) as client:
        snapshot = client.snapshot_instance(instance, max_restore_bytes=max_restore_bytes)
        if output is not None:
            _, chunks = client.export_snapshot(snapshot.name)
            _write_atomically(output, chunks)
    print(
        json.dumps(
            {
                "name": snapshot.name,
                "function": snapshot.function,
                "instance": snapshot.instance,
                "state_size_bytes": snapshot.state_size_bytes,
                "record_size_bytes": snapshot.record_size_bytes,
                "signed": snapshot.signed,
                "file": str(output) if output is not None else None,
            }
        )
    )
    return 0


def restore(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="a snapshot file, or snapshots/<id>", metavar="FILE|ID")
    ],
    *,
    max_restore_bytes: MaxRestoreBytes = DEFAULT_MAX_RESTORE_BYTES,
    require_signature: Annotated[
        bool, typer.Option("--require-signature", help="refuse a snapshot the store did not sign")
    ] = False,
    function: Annotated[
        str, typer.Option(help="refuse a snapshot that is not of this function")
    ] = "",
    ttl: Annotated[float, typer.Option(help="idle TTL of the new instance in seconds")] = 0.0,
) -> int:
    """Restore a snapshot (a file `snapshot save -o` wrote, or one in the store) as a new
    live instance of its function. Prints the new instance's name as JSON."""
    path = Path(source)
    record = None
    if path.is_file():
        size = path.stat().st_size
        if size > max_restore_bytes:
            typer.echo(
                f"error: {source} is {size} bytes, over --max-restore-bytes {max_restore_bytes}",
                err=True,
            )
            return LOCAL_VALIDATION_FAILED
        record = path.read_bytes()
    elif _SNAPSHOT_ID.fullmatch(source) is None:
        typer.echo(f"error: {source} is neither a file nor a snapshot name", err=True)
        return LOCAL_VALIDATION_FAILED
    with client_for(ctx) as client:
        snapshot = source
        if record is not None:
            snapshot = client.import_snapshot(
                record, max_restore_bytes=max_restore_bytes, require_signature=require_signature
            ).name
        restored = client.restore_instance(
            snapshot,
            function_id=function,
            idle_ttl_seconds=ttl,
            max_restore_bytes=max_restore_bytes,
            require_signature=require_signature,
        )
    print(json.dumps({"name": restored.instance.name, "snapshot": restored.snapshot.name}))
    return 0


def _write_atomically(output: Path, chunks: object) -> None:
    """Writes the chunks to a temporary file beside `output`, fsyncs, renames it over."""
    directory = output.parent if str(output.parent) else Path()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            for chunk in chunks:  # type: ignore[attr-defined]
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
