"""`tensorwasm up | down | status`: the five services on loopback, kept in the data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tensorwasm_client.cli.common import global_options
from tensorwasm_client.stack import TLS_DIR, LocalStack, health, stack_tls


def up(
    ctx: typer.Context,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="mTLS on every hop: a local CA and certificates under <data dir>/tls",
        ),
    ] = False,
) -> int:
    """Start the five services on loopback."""
    data_dir = global_options(ctx).data_dir
    services = LocalStack(data_dir, tls=tls).start()
    for service in services.values():
        metrics = f"http://{service.metrics_address}/metrics"
        print(f"{service.name:<11} {service.grpc_address:<22} {metrics:<40} pid {service.pid}")
    print(f"data dir: {data_dir}")
    if tls:
        print(tls_hint(data_dir))
    return 0


def tls_hint(data_dir: Path) -> str:
    """How the CLI reaches a TLS stack (the certificates `up --tls` made)."""
    certificates = data_dir / TLS_DIR
    return (
        f"TLS: tensorwasm --ca-file {certificates / 'ca.pem'} "
        f"--cert {certificates / 'client.pem'} --key {certificates / 'client.key'} ..."
    )


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
        state = health(service.grpc_address, tls=stack_tls(data_dir))
        worst = worst or int(state != "SERVING")
        print(f"{service.name:<11} {service.grpc_address:<22} {state}")
    return worst
