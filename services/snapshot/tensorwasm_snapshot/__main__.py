"""Entry point: `python -m tensorwasm_snapshot` (or `tensorwasm-snapshot`)."""

from __future__ import annotations

from tensorwasm_common.bootstrap import run_main

from tensorwasm_snapshot.server import serve
from tensorwasm_snapshot.settings import SnapshotSettings


def main() -> None:
    """Runs the snapshot store until SIGTERM."""
    run_main("snapshot", SnapshotSettings, serve)


if __name__ == "__main__":
    main()
