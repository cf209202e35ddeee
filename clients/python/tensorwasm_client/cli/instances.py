"""`tensorwasm instance create | list | get | call | delete`: live (stateful) instances."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from tensorwasm.common.v1 import values_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_wire

from tensorwasm_client.cli.common import (
    Deadline,
    Export,
    Fuel,
    JsonArgs,
    client_for,
    default_export,
    json_args,
    print_outcome,
    read_stdin,
    report,
)
from tensorwasm_client.client import GatewayClient

InstanceName = Annotated[str, typer.Argument(help="instances/<id>", metavar="INSTANCE")]


def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="function id", metavar="NAME")],
    stdin: Annotated[
        Path | None, typer.Option("--stdin", help="file the instance reads on stdin")
    ] = None,
    timeout: Annotated[float, typer.Option(help="instantiation deadline (s)")] = 0.0,
    ttl: Annotated[float, typer.Option(help="idle TTL in seconds")] = 0.0,
) -> int:
    """Start an instance of a function.

    Prints its name as JSON on the first line, then what its start function wrote.
    """
    with client_for(ctx) as client:
        created = client.create_instance(
            name, stdin=read_stdin(stdin), timeout_seconds=timeout, idle_ttl_seconds=ttl
        )
    if not created.HasField("instance"):
        sys.stdout.buffer.write(created.outcome.stdout)
        sys.stderr.buffer.write(created.outcome.stderr)
        return report(created.outcome)
    # The name first, on a line of its own (scripts read the first line); what the
    # start function wrote follows.
    print(json.dumps({"name": created.instance.name}), flush=True)
    sys.stdout.buffer.write(created.outcome.stdout)
    sys.stderr.buffer.write(created.outcome.stderr)
    return 0


def list_instances(ctx: typer.Context) -> int:
    """List the tenant's live instances: name, function, created, idle TTL."""
    with client_for(ctx) as client:
        for found in client.list_instances():
            ttl = (
                f"{found.idle_ttl.ToNanoseconds() / 1e9:g}s" if found.HasField("idle_ttl") else "-"
            )
            print(
                f"{found.name:<44} {found.function:<40} {found.create_time.ToJsonString()}  "
                f"ttl {ttl}"
            )
    return 0


def get(ctx: typer.Context, instance: InstanceName) -> int:
    """Show one live instance as indented JSON."""
    with client_for(ctx) as client:
        found = client.get_instance(instance)
    ttl = found.idle_ttl.ToNanoseconds() / 1e9 if found.HasField("idle_ttl") else None
    print(
        json.dumps(
            {
                "name": found.name,
                "function": found.function,
                "tenant": found.tenant,
                "create_time": found.create_time.ToJsonString(),
                "idle_ttl_seconds": ttl,
            },
            indent=2,
        )
    )
    return 0


def call(
    ctx: typer.Context,
    instance: InstanceName,
    *,
    export: Export = "",
    args: JsonArgs = "[]",
    timeout: Deadline = 0.0,
    fuel: Fuel = 0,
) -> int:
    """Call an export of an instance.

    Prints the results as JSON and exits as `invoke` does.
    """
    with client_for(ctx) as client:
        values = _call_args(client, instance, export, args)
        response = client.call_instance(
            instance, export, values, timeout_seconds=timeout, fuel=fuel
        )
    return print_outcome(response.outcome)


def delete(ctx: typer.Context, instance: InstanceName) -> int:
    """Terminate an instance."""
    with client_for(ctx) as client:
        client.delete_instance(instance)
    print(f"deleted {instance}")
    return 0


def _call_args(
    client: GatewayClient, instance: str, export: str, args: str
) -> list[values_pb2.Value]:
    """Typed arguments, by the export's signature (found through the instance's function)."""
    raw = json_args(args)
    if not raw:
        return []
    function = client.get_function(client.get_instance(instance).function)
    exports = {e.name: e.signature for e in function.exports}
    export = export or default_export(list(exports))
    if export not in exports:
        raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
    return to_wire(raw, list(exports[export].params))
