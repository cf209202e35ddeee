"""Entry point: `python -m tensorwasm_gateway` (or `tensorwasm-gateway`)."""

from __future__ import annotations

from tensorwasm_common.bootstrap import bootstrap, load_or_exit, run_on_loop

from tensorwasm_gateway.server import serve
from tensorwasm_gateway.settings import GatewaySettings


def main() -> None:
    """Runs the gateway until SIGTERM: one process, or (TENSORWASM_GATEWAY_PROCESSES > 1)
    a supervisor of that many worker processes sharing the ports."""
    settings = load_or_exit("gateway", GatewaySettings)
    bootstrap("gateway", settings)
    if settings.worker_count == 1:
        run_on_loop(serve(settings), settings.event_loop)
        return
    from tensorwasm_gateway.supervisor import supervise

    raise SystemExit(supervise(settings))


if __name__ == "__main__":
    main()
