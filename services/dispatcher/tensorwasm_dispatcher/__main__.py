"""Entry point: `python -m tensorwasm_dispatcher` (or `tensorwasm-dispatcher`)."""

from __future__ import annotations

from tensorwasm_common.bootstrap import run_main

from tensorwasm_dispatcher.server import serve
from tensorwasm_dispatcher.settings import DispatcherSettings


def main() -> None:
    """Runs the dispatcher until SIGTERM."""
    run_main("dispatcher", DispatcherSettings, serve)


if __name__ == "__main__":
    main()
