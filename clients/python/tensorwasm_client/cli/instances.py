"""`tensorwasm instance create | call | delete`: live (stateful) instances of a function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tensorwasm.common.v1 import values_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_wire

from tensorwasm_client.cli.common import (
    client_for,
    default_export,
    json_args,
    print_outcome,
    report,
)
from tensorwasm_client.client import GatewayClient


def add_parser(commands: Any) -> None:
    """Adds `instance` and its verbs to the CLI's subcommands."""
    instance = commands.add_parser("instance", help="live (stateful) instances")
    verbs = instance.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="start an instance of a function")
    create.add_argument("name")
    create.add_argument("--stdin", type=Path, help="file the instance reads on stdin")
    create.add_argument("--timeout", type=float, default=0.0, help="instantiation deadline (s)")
    create.add_argument("--ttl", type=float, default=0.0, help="idle TTL in seconds")
    call = verbs.add_parser("call", help="call an export of an instance")
    call.add_argument("instance")
    call.add_argument("--export", default="", help="export to call (default: the only one)")
    call.add_argument("--args", default="[]", help="JSON array of arguments")
    call.add_argument("--timeout", type=float, default=0.0, help="guest deadline in seconds")
    call.add_argument("--fuel", type=int, default=0, help="instruction budget (0: unmetered)")
    remove = verbs.add_parser("delete", help="terminate an instance")
    remove.add_argument("instance")


def run(args: argparse.Namespace) -> int:
    """Runs one `instance` verb; returns the exit code."""
    with client_for(args) as client:
        if args.verb == "create":
            stdin = args.stdin.read_bytes() if args.stdin else b""
            created = client.create_instance(
                args.name, stdin=stdin, timeout_seconds=args.timeout, idle_ttl_seconds=args.ttl
            )
            sys.stdout.buffer.write(created.outcome.stdout)
            sys.stderr.buffer.write(created.outcome.stderr)
            if not created.HasField("instance"):
                return report(created.outcome)
            print(json.dumps({"name": created.instance.name}))
            return 0
        if args.verb == "delete":
            client.delete_instance(args.instance)
            print(f"deleted {args.instance}")
            return 0
        values = _call_args(client, args)
        response = client.call_instance(
            args.instance, args.export, values, timeout_seconds=args.timeout, fuel=args.fuel
        )
    return print_outcome(response.outcome)


def _call_args(client: GatewayClient, args: argparse.Namespace) -> list[values_pb2.Value]:
    """Typed arguments, by the export's signature (found through the instance's function)."""
    raw = json_args(args.args)
    if not raw:
        return []
    function = client.get_function(client.get_instance(args.instance).function)
    exports = {e.name: e.signature for e in function.exports}
    export = args.export or default_export(list(exports))
    if export not in exports:
        raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
    return to_wire(raw, list(exports[export].params))
