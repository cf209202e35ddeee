"""`tensorwasm up | down | status | restart`: the five services, kept in the data dir.

`up`'s options are parsed here, once (`stack_options`): where the services listen. Options
that later change how the stack starts (TLS, a config file) belong in `StackOptions` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from tensorwasm_client.cli.common import global_options
from tensorwasm_client.stack import (
    DEFAULT_PORT_BASE,
    PORT_OFFSETS,
    TLS_DIR,
    LocalStack,
    ServiceProcess,
    StackAddresses,
    StackError,
    health,
    stack_tls,
)

_PORT_HELP = "gRPC port of the {} (default: port base + {}; beats TENSORWASM_{}_LISTEN_ADDRESS)"


@dataclass(frozen=True)
class StackOptions:
    """How `up` starts the stack: the addresses, and whether every hop is mTLS."""

    addresses: StackAddresses
    tls: bool = False


def stack_options(
    host: str,
    port_base: int,
    ports: dict[str, int | None],
    http_address: str,
    *,
    tls: bool = False,
) -> StackOptions:
    """The `up` options as one value (raises StackError for a bad one)."""
    chosen = {name: port for name, port in ports.items() if port is not None}
    return StackOptions(StackAddresses(host, port_base, chosen, http_address), tls)


def _port_option(service: str) -> Any:
    return typer.Option(
        f"--{service}-port",
        help=_PORT_HELP.format(service, PORT_OFFSETS[service], service.upper()),
        show_default=False,
    )


def up(
    ctx: typer.Context,
    *,
    host: Annotated[
        str, typer.Option("--host", help="interface every service listens on")
    ] = "127.0.0.1",
    port_base: Annotated[
        int,
        typer.Option(
            "--port-base",
            help="gRPC ports are base+0 (gateway) to base+4 (jit), metrics base+10 to "
            "base+14, HTTP 8080 (default base) or base+20",
        ),
    ] = DEFAULT_PORT_BASE,
    gateway_port: Annotated[int | None, _port_option("gateway")] = None,
    executor_port: Annotated[int | None, _port_option("executor")] = None,
    dispatcher_port: Annotated[int | None, _port_option("dispatcher")] = None,
    snapshot_port: Annotated[int | None, _port_option("snapshot")] = None,
    jit_port: Annotated[int | None, _port_option("jit")] = None,
    http_address: Annotated[
        str,
        typer.Option(
            "--http-address",
            help="HOST:PORT of the gateway's HTTP/JSON face, 'off' for none "
            "(default: TENSORWASM_GATEWAY_HTTP_ADDRESS, else see --port-base)",
            show_default=False,
        ),
    ] = "",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="mTLS on every hop: a local CA and certificates under <data dir>/tls",
        ),
    ] = False,
) -> int:
    """Start the five services (TENSORWASM_<SVC>_LISTEN_ADDRESS, _METRICS_ADDRESS and
    TENSORWASM_GATEWAY_HTTP_ADDRESS are honoured; the flags beat them)."""
    data_dir = global_options(ctx).data_dir
    options = stack_options(
        host,
        port_base,
        {
            "gateway": gateway_port,
            "executor": executor_port,
            "dispatcher": dispatcher_port,
            "snapshot": snapshot_port,
            "jit": jit_port,
        },
        http_address,
        tls=tls,
    )
    stack = LocalStack(data_dir, addresses=options.addresses, tls=options.tls)
    services = stack.start()
    for service in services.values():
        print(_service_line(service, "SERVING"))
    print(f"data dir: {data_dir}")
    if options.tls:
        print(tls_hint(data_dir))
    _print_warnings(stack)
    return 0


def down(ctx: typer.Context) -> int:
    """Stop the local stack."""
    stopped = LocalStack(global_options(ctx).data_dir).stop()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def status(ctx: typer.Context) -> int:
    """Show each local service: health, gRPC, HTTP and metrics addresses, pid and log.

    Exits 1 unless all of them are serving.
    """
    data_dir = global_options(ctx).data_dir
    stack = LocalStack(data_dir)
    services = stack.services()
    if not services:
        print(f"no stack recorded in {data_dir}")
        return 1
    worst = 0
    for service in services.values():
        alive = stack.alive(service.name)
        state = health(service.grpc_address, tls=stack_tls(data_dir)) if alive else "EXITED"
        worst = worst or int(state != "SERVING")
        print(_service_line(service, state))
    if worst:
        print("restart one service with: tensorwasm restart SERVICE")
    return worst


def restart(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="the service, e.g. gateway or executor")],
) -> int:
    """Restart one service of the local stack (running or exited) on its ports."""
    stack = LocalStack(global_options(ctx).data_dir)
    known = stack.services()
    if not known:
        raise StackError(f"no stack recorded in {stack.data_dir}: start one with tensorwasm up")
    if service not in known:
        raise StackError(f"no service {service!r} in the stack (one of: {', '.join(known)})")
    started = stack.restart_service(service)
    print(_service_line(started, "SERVING"))
    _print_warnings(stack)
    return 0


def _service_line(service: ServiceProcess, state: str) -> str:
    http = f"  http {service.http_address}" if service.http_address else ""
    metrics = f"http://{service.metrics_address}/metrics" if service.metrics_address else "-"
    return (
        f"{service.name:<11} {state:<11} grpc {service.grpc_address}{http}  "
        f"metrics {metrics}  pid {service.pid}  log {service.log_path}"
    )


def tls_hint(data_dir: Path) -> str:
    """How the CLI reaches a TLS stack (the certificates `up --tls` made)."""
    certificates = data_dir / TLS_DIR
    return (
        f"TLS: tensorwasm --ca-file {certificates / 'ca.pem'} "
        f"--cert {certificates / 'client.pem'} --key {certificates / 'client.key'} ..."
    )


def _print_warnings(stack: LocalStack) -> None:
    for name, message in stack.start_warnings:
        typer.echo(f"warning: {name}: {message}", err=True)
