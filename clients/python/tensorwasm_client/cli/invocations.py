"""`tensorwasm invoke` (unary, streaming or async) and `tensorwasm invocation get | list`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_json, to_wire
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb

from tensorwasm_client.cli.common import client_for, default_export, json_args, report
from tensorwasm_client.client import GatewayClient, TensorWasmError


def add_parsers(commands: Any) -> None:
    """Adds `invoke` and `invocation` (with its verbs) to the CLI's subcommands."""
    invoke = commands.add_parser("invoke", help="call an export; prints the results as JSON")
    invoke.add_argument("name")
    invoke.add_argument("--export", default="", help="export to call (default: the only one)")
    invoke.add_argument("--args", default="[]", help="JSON array of arguments")
    invoke.add_argument("--stdin", type=Path, help="file whose bytes the guest reads on stdin")
    invoke.add_argument("--timeout", type=float, default=0.0, help="guest deadline in seconds")
    invoke.add_argument("--fuel", type=int, default=0, help="instruction budget (0: unmetered)")
    invoke.add_argument(
        "--stream",
        action="store_true",
        help="write the guest's stdout/stderr as it runs (streaming invoke)",
    )
    invoke.add_argument(
        "--async",
        dest="run_async",
        action="store_true",
        help="start an async invocation and print its name (see `tensorwasm invocation`)",
    )
    invoke.add_argument("--request-id", default="", help="idempotency key for --async")
    invocation = commands.add_parser("invocation", help="async invocations")
    invocation_verbs = invocation.add_subparsers(dest="verb", required=True)
    get_invocation = invocation_verbs.add_parser("get", help="show one invocation")
    get_invocation.add_argument("invocation")
    get_invocation.add_argument(
        "--wait", action="store_true", help="wait until it has finished; exit as `invoke` does"
    )
    get_invocation.add_argument("--wait-timeout", type=float, default=300.0)
    invocation_verbs.add_parser("list", help="list the tenant's retained invocations")


def invoke(args: argparse.Namespace) -> int:
    """Calls an export (or starts an async invocation); exits as the guest did."""
    raw_args = json_args(args.args)
    stdin = args.stdin.read_bytes() if args.stdin else b""
    with client_for(args) as client:
        function = client.get_function(args.name)
        exports = {e.name: e.signature for e in function.exports}
        export = args.export or default_export(list(exports))
        if export not in exports:
            raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
        values = to_wire(raw_args, list(exports[export].params))
        options = {"stdin": stdin, "timeout_seconds": args.timeout, "fuel": args.fuel}
        if args.stream:
            return _invoke_streaming(client, args.name, export, values, options)
        if args.run_async:
            started = client.start_invocation(
                args.name, export, values, request_id=args.request_id, **options
            )
            print(json.dumps({"name": started.name}))
            return 0
        response = client.invoke(args.name, export, values, **options)
    outcome = response.outcome
    sys.stdout.buffer.write(outcome.stdout)
    sys.stderr.buffer.write(outcome.stderr)
    sys.stdout.flush()
    return report(outcome)


def _invoke_streaming(
    client: GatewayClient,
    name: str,
    export: str,
    values: list[values_pb2.Value],
    options: dict[str, Any],
) -> int:
    """Writes each output chunk as it arrives (flushed), then reports the outcome."""
    sinks = {
        invocation_pb2.OUTPUT_STREAM_STDOUT: sys.stdout.buffer,
        invocation_pb2.OUTPUT_STREAM_STDERR: sys.stderr.buffer,
    }
    with client.invoke_stream(name, export, values, **options) as events:
        for event in events:
            if event.HasField("outcome"):
                return report(event.outcome)
            sink = sinks.get(event.output.stream)
            if sink is not None:
                sink.write(event.output.data)
                sink.flush()
    raise TensorWasmError("UNKNOWN", "STREAM_ENDED", "the stream ended without an outcome")


def invocation(args: argparse.Namespace) -> int:
    """`invocation get` prints the invocation as JSON (--wait: then exits as `invoke`);
    `invocation list` prints one line per invocation."""
    with client_for(args) as client:
        if args.verb == "list":
            for item in client.list_invocations():
                state = _invocation_json(item)["state"]
                print(f"{item.name:<46} {state:<10} {item.function} {item.export_name}")
            return 0
        if args.wait:
            found = client.wait_invocation(args.invocation, args.wait_timeout)
        else:
            found = client.get_invocation(args.invocation)
    print(json.dumps(_invocation_json(found)))
    if not args.wait:
        return 0
    if found.HasField("error"):
        print(f"error: {found.error.reason}: {found.error.message}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(found.outcome.stdout)
    sys.stderr.buffer.write(found.outcome.stderr)
    return report(found.outcome)


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
