"""Entry point: `python -m tensorwasm_executor` (or `tensorwasm-executor`)."""

from __future__ import annotations

from tensorwasm_common.bootstrap import run_main

from tensorwasm_executor.server import serve
from tensorwasm_executor.settings import ExecutorSettings


def main() -> None:
    """Runs the executor until SIGTERM."""
    run_main("executor", ExecutorSettings, serve)


if __name__ == "__main__":
    main()
