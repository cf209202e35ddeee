"""`tensorwasm invoke` (unary, streaming or async) and `tensorwasm invocation get | list`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_json, to_wire
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb

from tensorwasm_client.cli.common import (
    Deadline,
    Export,
    Fuel,
    JsonArgs,
    StdinFile,
    client_for,
    default_export,
    json_args,
    print_outcome,
    read_stdin,
    report,
)
from tensorwasm_client.cli.output import show_record, show_rows
from tensorwasm_client.client import GatewayClient, TensorWasmError


def invoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="function id", metavar="NAME")],
    *,
    export: Export = "",
    args: JsonArgs = "[]",
    stdin: StdinFile = None,
    timeout: Deadline = 0.0,
    fuel: Fuel = 0,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream", help="write the guest's stdout/stderr as it runs (streaming invoke)"
        ),
    ] = False,
    run_async: Annotated[
        bool,
        typer.Option(
            "--async",
            help="start an async invocation and print its name (see `tensorwasm invocation`)",
        ),
    ] = False,
    request_id: Annotated[str, typer.Option(help="idempotency key for --async")] = "",
) -> int:
    """Call an export; print the results as JSON.

    Exits as the guest did: 1 for a trap or a refusal, n for proc_exit(n).
    """
    raw_args = json_args(args)
    stdin_bytes = read_stdin(stdin)
    with client_for(ctx) as client:
        function = client.get_function(name)
        exports = {e.name: e.signature for e in function.exports}
        export = export or default_export(list(exports))
        if export not in exports:
            raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
        values = to_wire(raw_args, list(exports[export].params))
        options: dict[str, Any] = {"stdin": stdin_bytes, "timeout_seconds": timeout, "fuel": fuel}
        if stream:
            return _invoke_streaming(client, name, export, values, options)
        if run_async:
            started = client.start_invocation(
                name, export, values, request_id=request_id, **options
            )
            print(json.dumps({"name": started.name}))
            return 0
        response = client.invoke(name, export, values, **options)
    return print_outcome(response.outcome)


def _invoke_streaming(
    client: GatewayClient,
    name: str,
    export: str,
    values: list[values_pb2.Value],
    options: dict[str, Any],
) -> int:
    """Writes each output chunk as it arrives (flushed; chunks the guest emitted with
    wasi:tensor go to stdout), then reports the outcome."""
    sinks = {
        invocation_pb2.OUTPUT_STREAM_STDOUT: sys.stdout.buffer,
        invocation_pb2.OUTPUT_STREAM_STDERR: sys.stderr.buffer,
    }
    with client.invoke_stream(name, export, values, **options) as events:
        for event in events:
            if event.HasField("outcome"):
                return report(event.outcome)
            if event.WhichOneof("event") == "chunk":
                sys.stdout.buffer.write(event.chunk)
                sys.stdout.buffer.flush()
                continue
            sink = sinks.get(event.output.stream)
            if sink is not None:
                sink.write(event.output.data)
                sink.flush()
    raise TensorWasmError("UNKNOWN", "STREAM_ENDED", "the stream ended without an outcome")


def get_invocation(
    ctx: typer.Context,
    invocation: Annotated[str, typer.Argument(help="invocations/<id>", metavar="INVOCATION")],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="wait until it has finished; exit as `invoke` does"),
    ] = False,
    wait_timeout: Annotated[float, typer.Option(help="give up waiting after (s)")] = 300.0,
) -> int:
    """Show one invocation as JSON.

    With --wait: once it has finished, then exits as `invoke` does.
    """
    with client_for(ctx) as client:
        if wait:
            found = client.wait_invocation(invocation, wait_timeout)
        else:
            found = client.get_invocation(invocation)
    document = _invocation_json(found)
    show_record(ctx, document, lambda: print(json.dumps(document)))
    if not wait:
        return 0
    if found.HasField("error"):
        print(f"error: {found.error.reason}: {found.error.message}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(found.outcome.stdout)
    sys.stderr.buffer.write(found.outcome.stderr)
    return report(found.outcome)


def list_invocations(ctx: typer.Context) -> int:
    """List the tenant's retained invocations, one line each."""
    with client_for(ctx) as client:
        rows = [_invocation_json(item) for item in client.list_invocations()]

    def usual() -> None:
        for row in rows:
            print(f"{row['name']:<46} {row['state']:<10} {row['function']} {row['export']}")

    show_rows(ctx, rows, ["name", "state", "function", "export"], usual)
    return 0


def _invocation_json(invocation: gateway_pb.Invocation) -> dict[str, object]:
    state = gateway_pb.InvocationState.Name(invocation.state).removeprefix("INVOCATION_STATE_")
    document: dict[str, object] = {
        "name": invocation.name,
        "function": invocation.function,
        "export": invocation.export_name,
        "state": state.lower(),
    }
    if invocation.outcome.HasField("success"):
        document["results"] = to_json(invocation.outcome.success.results)
    if invocation.outcome.HasField("failure"):
        failure = invocation.outcome.failure
        document["failure"] = {"reason": failure.reason, "message": failure.message}
    if invocation.HasField("error"):
        document["error"] = {"reason": invocation.error.reason, "message": invocation.error.message}
    return document
