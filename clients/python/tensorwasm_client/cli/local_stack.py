"""`tensorwasm up | down | status`: the five services on loopback, kept in the data dir."""

from __future__ import annotations

import typer

from tensorwasm_client.cli.common import global_options
from tensorwasm_client.stack import LocalStack, health


def up(ctx: typer.Context) -> int:
    """Start the five services on loopback."""
    data_dir = global_options(ctx).data_dir
    services = LocalStack(data_dir).start()
    for service in services.values():
        metrics = f"http://{service.metrics_address}/metrics"
        print(f"{service.name:<11} {service.grpc_address:<22} {metrics:<40} pid {service.pid}")
    print(f"data dir: {data_dir}")
    return 0


def down(ctx: typer.Context) -> int:
    """Stop the local stack."""
    stopped = LocalStack(global_options(ctx).data_dir).stop()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def status(ctx: typer.Context) -> int:
    """Show the health of each local service.

    Exits 1 unless all of them are serving.
    """
    data_dir = global_options(ctx).data_dir
    services = LocalStack(data_dir).services()
    if not services:
        print(f"no stack recorded in {data_dir}")
        return 1
    worst = 0
    for service in services.values():
        state = health(service.grpc_address)
        worst = worst or int(state != "SERVING")
        print(f"{service.name:<11} {service.grpc_address:<22} {state}")
    return worst
