"""Entry point: `python -m tensorwasm_jit` (or `tensorwasm-jit`)."""

from __future__ import annotations

from tensorwasm_common.bootstrap import run_main

from tensorwasm_jit.server import serve
from tensorwasm_jit.settings import JitSettings


def main() -> None:
    """Runs the jit cache until SIGTERM."""
    run_main("jit", JitSettings, serve)


if __name__ == "__main__":
    main()
