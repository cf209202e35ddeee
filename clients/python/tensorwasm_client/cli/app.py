"""The `tensorwasm` command: run the local stack, deploy and invoke functions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tensorwasm.common.v1.values_json import ArgumentError

from tensorwasm_client.cli import functions as cli_functions
from tensorwasm_client.cli import instances as cli_instances
from tensorwasm_client.cli import invocations as cli_invocations
from tensorwasm_client.cli import run as cli_run
from tensorwasm_client.cli import snapshots
from tensorwasm_client.client import DEFAULT_GATEWAY, TensorWasmError
from tensorwasm_client.stack import LocalStack, StackError, default_data_dir, health


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorwasm", description=__doc__)
    parser.add_argument(
        "--gateway",
        default=os.environ.get("TENSORWASM_GATEWAY", DEFAULT_GATEWAY),
        help="gateway address (env TENSORWASM_GATEWAY; default %(default)s)",
    )
    parser.add_argument(
        "--tenant",
        default=os.environ.get("TENSORWASM_TENANT"),
        help="tenant (env TENSORWASM_TENANT)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TENSORWASM_TOKEN"),
        help="bearer token for the gateway (env TENSORWASM_TOKEN; prefer the env var)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TENSORWASM_DATA_DIR") or default_data_dir()),
        help="local stack state (env TENSORWASM_DATA_DIR; default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the five services on loopback")
    commands.add_parser("down", help="stop the local stack")
    commands.add_parser("status", help="health of each local service")
    cli_functions.add_parsers(commands)
    snapshots.add_parser(commands)
    cli_run.add_parser(commands)
    cli_invocations.add_parsers(commands)
    cli_instances.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    guest_argv: list[str] = []
    if "--" in argv:  # everything after the first `--` is the guest's (tensorwasm run)
        split = argv.index("--")
        argv, guest_argv = argv[:split], argv[split + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if guest_argv and args.command != "run":
        parser.error("arguments after `--` are only for `tensorwasm run`")
    args.guest_argv = guest_argv
    try:
        return int(_COMMANDS[args.command](args))
    except TensorWasmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (StackError, ArgumentError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a streaming invoke was cancelled on the way out
        print("error: interrupted", file=sys.stderr)
        return 130


def _up(args: argparse.Namespace) -> int:
    services = LocalStack(args.data_dir).start()
    for service in services.values():
        metrics = f"http://{service.metrics_address}/metrics"
        print(f"{service.name:<11} {service.grpc_address:<22} {metrics:<40} pid {service.pid}")
    print(f"data dir: {args.data_dir}")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = LocalStack(args.data_dir).stop()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    services = LocalStack(args.data_dir).services()
    if not services:
        print(f"no stack recorded in {args.data_dir}")
        return 1
    worst = 0
    for service in services.values():
        state = health(service.grpc_address)
        worst = worst or int(state != "SERVING")
        print(f"{service.name:<11} {service.grpc_address:<22} {state}")
    return worst


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "deploy": cli_functions.deploy,
    "invoke": cli_invocations.invoke,
    "list": cli_functions.list_functions,
    "get": cli_functions.get,
    "delete": cli_functions.delete,
    "run": cli_run.run,
    "instance": cli_instances.run,
    "invocation": cli_invocations.invocation,
    "snapshot": snapshots.run,
}


if __name__ == "__main__":
    sys.exit(main())
