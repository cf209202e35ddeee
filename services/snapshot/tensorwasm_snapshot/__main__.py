"""Entry point: `python -m tensorwasm_snapshot` (or `tensorwasm-snapshot`) serves; with a
maintenance command first, runs it on the data directory of the store (stopped) and exits:

    python -m tensorwasm_snapshot rebuild-index [--data-dir DIR] [--signing-key-file F]
    python -m tensorwasm_snapshot release-holds [--data-dir DIR]

Both take the server's settings (flags or TENSORWASM_SNAPSHOT_* variables); see
`tensorwasm_snapshot.index_repair` for what a rebuild can and cannot recover.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from tensorwasm_common.bootstrap import run_main
from tensorwasm_common.settings import SettingsError, load_settings

from tensorwasm_snapshot.index_repair import rebuild_index, release_holds
from tensorwasm_snapshot.server import serve
from tensorwasm_snapshot.settings import SnapshotSettings

COMMANDS = ("rebuild-index", "release-holds")


def main() -> None:
    """Runs the snapshot store until SIGTERM, or one maintenance command."""
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        raise SystemExit(maintain(sys.argv[1], sys.argv[2:]))
    run_main("snapshot", SnapshotSettings, serve)


def maintain(command: str, argv: list[str]) -> int:
    """Runs a maintenance command; prints its report as one JSON line; -> exit status."""
    try:
        settings = load_settings(SnapshotSettings, "snapshot", argv=argv)
    except SettingsError as exc:
        print(f"tensorwasm-snapshot {command}: invalid settings: {exc}", file=sys.stderr)
        return 2
    if not settings.resolved_database_url.startswith("sqlite:") or settings.blob_url.startswith(
        "s3:"
    ):
        print(
            f"tensorwasm-snapshot {command}: works on a local store with its SQLite index only"
            " (TENSORWASM_SNAPSHOT_BLOB_URL or TENSORWASM_SNAPSHOT_DATABASE_URL names another)",
            file=sys.stderr,
        )
        return 2
    if command == "rebuild-index":
        report = rebuild_index(
            settings.data_dir,
            signing_key=settings.signing_key(),
            max_blob_bytes=settings.max_blob_bytes,
            chunk_bytes=settings.chunk_bytes,
        )
        print(json.dumps(dataclasses.asdict(report)))
    else:
        print(json.dumps({"released": release_holds(settings.data_dir)}))
    return 0


if __name__ == "__main__":
    main()
