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
from tensorwasm.common.v1.values_json import TYPE_NAMES, ArgumentError, to_json, to_wire
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb

from tensorwasm_client import snapshots
from tensorwasm_client.client import (
    DEFAULT_GATEWAY,
    GatewayClient,
    TensorWasmError,
    invocation_limits,
)
from tensorwasm_client.local_run import load_module_bytes, run_local
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
    deploy = commands.add_parser("deploy", help="deploy a .wasm or .wat file")
    deploy.add_argument("file", type=Path)
    deploy.add_argument("--name", help="function id (default: from the file name)")
    _wasi_flags(deploy, directory_help="read-only directory, relative to the tenant's grant")
    deploy.add_argument("--timeout", type=float, default=0.0, help="default guest deadline (s)")
    deploy.add_argument("--fuel", type=int, default=0, help="default instruction budget")
    deploy.add_argument("--memory", type=int, default=0, help="default linear-memory cap (bytes)")
    deploy.add_argument("--argv", action="append", default=[], help="guest argv entry (repeat)")
    init = deploy.add_mutually_exclusive_group()
    init.add_argument(
        "--init-export",
        default="",
        help="export () -> () run once at deploy; calls start from the state it leaves "
        "(default: wizer.initialize when exported)",
    )
    init.add_argument(
        "--no-init", action="store_true", help="do not pre-initialise with wizer.initialize"
    )
    deploy.add_argument(
        "--offload",
        action="store_true",
        help="run the exports declared in the module's tensorwasm.offload custom section "
        "as tensor ops on the GPU (checked at deploy)",
    )
    commands.add_parser("list", help="list functions")
    snapshots.add_parser(commands)
    get = commands.add_parser("get", help="show one function")
    get.add_argument("name")
    delete = commands.add_parser("delete", help="delete a function")
    delete.add_argument("name")
    _add_run(commands)
    _add_instance(commands)
    return parser


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="run a .wasm/.wat file locally, without the services (like wasmtime run)"
    )
    run.add_argument("file", type=Path)
    run.epilog = "Guest arguments follow a `--`: tensorwasm run app.wasm -- --verbose in.txt"
    run.add_argument(
        "--export", default="", help="export to call (default: _start or the only one)"
    )
    run.add_argument("--args", default="[]", help="JSON array of typed arguments")
    run.add_argument("--stdin", type=Path, help="file whose bytes the guest reads on stdin")
    run.add_argument("--timeout", type=float, default=0.0, help="guest deadline in seconds")
    run.add_argument("--fuel", type=int, default=0, help="instruction budget (0: unmetered)")
    _wasi_flags(run, directory_help="host directory the guest may read")
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


def _add_instance(commands: Any) -> None:
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


def _wasi_flags(parser: argparse.ArgumentParser, *, directory_help: str) -> None:
    parser.add_argument("--env", action="append", default=[], help="NAME=value (repeat)")
    parser.add_argument("--dir", default="", help=directory_help)
    parser.add_argument("--guest-dir", default="/data", help="where the guest sees --dir")


def _env_pairs(entries: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ArgumentError(f"--env takes NAME=value, got {entry!r}")
        pairs.append((name, value))
    return pairs


def _json_args(text: str) -> list[object]:
    raw = json.loads(text)
    if not isinstance(raw, list):
        raise ArgumentError("--args must be a JSON array")
    return raw


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


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.gateway, tenant=args.tenant, token=args.token)


def _deploy(args: argparse.Namespace) -> int:
    source = load_module_bytes(args.file)
    name = args.name or re.sub(r"[^a-z0-9-]+", "-", args.file.stem.lower()).strip("-")
    config = gateway_pb.FunctionConfig(
        wasi=invocation_pb2.WasiConfig(
            argv=args.argv,
            env=dict(_env_pairs(args.env)),
            read_only_dir=args.dir,
            guest_dir=args.guest_dir if args.dir else "",
        ),
        default_limits=invocation_limits(args.timeout, args.fuel, args.memory),
        init_export=args.init_export,
        no_init=args.no_init,
        auto_offload=args.offload,
    )
    with _client(args) as client:
        function = client.create_function(name, source, config)
    exports = {e.name: _signature(e.signature) for e in function.exports}
    print(
        json.dumps(
            {
                "name": function.name,
                "module_digest": function.module_digest,
                "exports": exports,
                "init_export": function.config.init_export,
                "offloads": {o.export_name: o.op for o in function.config.offloads},
            }
        )
    )
    return 0


def _signature(signature: object) -> str:
    params = ", ".join(TYPE_NAMES.get(t, "?") for t in signature.params)  # type: ignore[attr-defined]
    results = ", ".join(TYPE_NAMES.get(t, "?") for t in signature.results)  # type: ignore[attr-defined]
    return f"({params}) -> ({results})"


def _invoke(args: argparse.Namespace) -> int:
    raw_args = _json_args(args.args)
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


def _invocation(args: argparse.Namespace) -> int:
    """`invocation get` prints the invocation as JSON (--wait: then exits as `invoke`);
    `invocation list` prints one line per invocation."""
    with _client(args) as client:
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
    return _report(found.outcome)


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


def _run(args: argparse.Namespace) -> int:
    outcome = run_local(
        args.file,
        export=args.export,
        json_args=_json_args(args.args),
        argv=args.guest_argv,
        env=_env_pairs(args.env),
        read_only_dir=args.dir or None,
        guest_dir=args.guest_dir,
        stdin=args.stdin.read_bytes() if args.stdin else b"",
        timeout_seconds=args.timeout,
        fuel=args.fuel,
    )
    return _print_outcome(outcome)


def _print_outcome(outcome: invocation_pb2.InvocationOutcome) -> int:
    sys.stdout.buffer.write(outcome.stdout)
    sys.stderr.buffer.write(outcome.stderr)
    sys.stdout.flush()
    return _report(outcome)


def _instance(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.verb == "create":
            stdin = args.stdin.read_bytes() if args.stdin else b""
            created = client.create_instance(
                args.name, stdin=stdin, timeout_seconds=args.timeout, idle_ttl_seconds=args.ttl
            )
            sys.stdout.buffer.write(created.outcome.stdout)
            sys.stderr.buffer.write(created.outcome.stderr)
            if not created.HasField("instance"):
                return _report(created.outcome)
            print(json.dumps({"name": created.instance.name}))
            return 0
        if args.verb == "delete":
            client.delete_instance(args.instance)
            print(f"deleted {args.instance}")
            return 0
        values = _instance_args(client, args)
        response = client.call_instance(
            args.instance, args.export, values, timeout_seconds=args.timeout, fuel=args.fuel
        )
    return _print_outcome(response.outcome)


def _instance_args(client: GatewayClient, args: argparse.Namespace) -> list[values_pb2.Value]:
    """Typed arguments, by the export's signature (found through the instance's function)."""
    raw = _json_args(args.args)
    if not raw:
        return []
    function = client.get_function(client.get_instance(args.instance).function)
    exports = {e.name: e.signature for e in function.exports}
    export = args.export or _default_export(list(exports))
    if export not in exports:
        raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
    return to_wire(raw, list(exports[export].params))


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
    "run": _run,
    "instance": _instance,
    "invocation": _invocation,
    "snapshot": snapshots.run,
}


if __name__ == "__main__":
    sys.exit(main())
