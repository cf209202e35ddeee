"""Entry point: `python -m tensorwasm_gateway` (or `tensorwasm-gateway`)."""

from __future__ import annotations

from tensorwasm_common.bootstrap import run_main

from tensorwasm_gateway.server import serve
from tensorwasm_gateway.settings import GatewaySettings


def main() -> None:
    """Runs the gateway until SIGTERM."""
    run_main("gateway", GatewaySettings, serve)


if __name__ == "__main__":
    main()
