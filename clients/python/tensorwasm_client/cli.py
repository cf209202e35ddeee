"""The `tensorwasm` command: run the local stack, deploy and invoke functions."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from tensorwasm.common.v1 import invocation_pb2, values_pb2

from tensorwasm_client.client import DEFAULT_GATEWAY, GatewayClient, TensorWasmError
from tensorwasm_client.stack import LocalStack, StackError, default_data_dir, health
from tensorwasm_client.values import TYPE_NAMES, ArgumentError, to_json, to_wire


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
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TENSORWASM_DATA_DIR") or default_data_dir()),
        help="local stack state (env TENSORWASM_DATA_DIR; default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the five services on loopback")
    commands.add_parser("down", help="stop the local stack")
    commands.add_parser("status", help="health of each local service")
    deploy = commands.add_parser("deploy", help="deploy a .wasm or .wat file")
    deploy.add_argument("file", type=Path)
    deploy.add_argument("--name", help="function id (default: from the file name)")
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
    commands.add_parser("list", help="list functions")
    get = commands.add_parser("get", help="show one function")
    get.add_argument("name")
    delete = commands.add_parser("delete", help="delete a function")
    delete.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the process exit code."""
    args = _parser().parse_args(argv)
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


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.gateway, tenant=args.tenant)


def _deploy(args: argparse.Namespace) -> int:
    source = args.file.read_bytes()
    if args.file.suffix == ".wat":
        import wasmtime

        try:
            source = bytes(wasmtime.wat2wasm(source.decode()))
        except wasmtime.WasmtimeError as exc:
            raise ArgumentError(f"{args.file} is not valid WAT: {exc}") from None
    name = args.name or re.sub(r"[^a-z0-9-]+", "-", args.file.stem.lower()).strip("-")
    with _client(args) as client:
        function = client.create_function(name, source)
    exports = {e.name: _signature(e.signature) for e in function.exports}
    print(
        json.dumps(
            {"name": function.name, "module_digest": function.module_digest, "exports": exports}
        )
    )
    return 0


def _signature(signature: object) -> str:
    params = ", ".join(TYPE_NAMES.get(t, "?") for t in signature.params)  # type: ignore[attr-defined]
    results = ", ".join(TYPE_NAMES.get(t, "?") for t in signature.results)  # type: ignore[attr-defined]
    return f"({params}) -> ({results})"


def _invoke(args: argparse.Namespace) -> int:
    raw_args = json.loads(args.args)
    if not isinstance(raw_args, list):
        raise ArgumentError("--args must be a JSON array")
    stdin = args.stdin.read_bytes() if args.stdin else b""
    with _client(args) as client:
        function = client.get_function(args.name)
        exports = {e.name: e.signature for e in function.exports}
        export = args.export or (
            next(iter(exports)) if len(exports) == 1 else "_start" if "_start" in exports else ""
        )
        if export not in exports:
            raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
        values = to_wire(raw_args, list(exports[export].params))
        options = {"stdin": stdin, "timeout_seconds": args.timeout, "fuel": args.fuel}
        if args.stream:
            return _invoke_streaming(client, args.name, export, values, options)
        response = client.invoke(args.name, export, values, **options)
    outcome = response.outcome
    sys.stdout.buffer.write(outcome.stdout)
    sys.stderr.buffer.write(outcome.stderr)
    sys.stdout.flush()
    return _report(outcome)


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
                return _report(event.outcome)
            sink = sinks.get(event.output.stream)
            if sink is not None:
                sink.write(event.output.data)
                sink.flush()
    raise TensorWasmError("UNKNOWN", "STREAM_ENDED", "the stream ended without an outcome")


def _report(outcome: invocation_pb2.InvocationOutcome) -> int:
    """Prints the results as JSON (or the failure); returns the exit code."""
    sys.stdout.flush()
    if outcome.HasField("failure"):
        failure = outcome.failure
        code = failure.exit_code if failure.reason == "PROC_EXIT" else 1
        print(f"error: guest failed: {failure.reason}: {failure.message}", file=sys.stderr)
        return code or 1
    print(json.dumps(to_json(outcome.success.results)))
    return 0


def _default_export(names: list[str]) -> str:
    """The gateway's rule: the only export, else `_start`."""
    if len(names) == 1:
        return names[0]
    return "_start" if "_start" in names else ""


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for function in client.list_functions():
            exports = ", ".join(e.name for e in function.exports)
            size = f"{function.module_size_bytes} B"
            print(f"{function.name:<40} {function.module_digest[:16]}  {size:>12}  [{exports}]")
    return 0


def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        function = client.get_function(args.name)
    exports = {e.name: _signature(e.signature) for e in function.exports}
    print(
        json.dumps(
            {
                "name": function.name,
                "tenant": function.tenant,
                "module_digest": function.module_digest,
                "module_size_bytes": function.module_size_bytes,
                "exports": exports,
            },
            indent=2,
        )
    )
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_function(args.name)
    print(f"deleted {args.name}")
    return 0


_COMMANDS = {
    "up": _up,
    "down": _down,
    "status": _status,
    "deploy": _deploy,
    "invoke": _invoke,
    "list": _list,
    "get": _get,
    "delete": _delete,
}


if __name__ == "__main__":
    sys.exit(main())
