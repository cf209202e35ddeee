"""Helpers shared by the `tensorwasm` subcommands: the client, arguments, outcome printing."""

from __future__ import annotations

import argparse
import json
import sys

from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_json import TYPE_NAMES, ArgumentError, to_json

from tensorwasm_client.client import GatewayClient


def client_for(args: argparse.Namespace) -> GatewayClient:
    """A gateway client for the global `--gateway`, `--tenant` and `--token` flags."""
    return GatewayClient(args.gateway, tenant=args.tenant, token=args.token)


def add_wasi_flags(parser: argparse.ArgumentParser, *, directory_help: str) -> None:
    """Adds `--env`, `--dir` and `--guest-dir` to `parser`."""
    parser.add_argument("--env", action="append", default=[], help="NAME=value (repeat)")
    parser.add_argument("--dir", default="", help=directory_help)
    parser.add_argument("--guest-dir", default="/data", help="where the guest sees --dir")


def env_pairs(entries: list[str]) -> list[tuple[str, str]]:
    """The `--env NAME=value` entries as pairs; raises ArgumentError for a malformed one."""
    pairs = []
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ArgumentError(f"--env takes NAME=value, got {entry!r}")
        pairs.append((name, value))
    return pairs


def json_args(text: str) -> list[object]:
    """The `--args` JSON array; raises ArgumentError when it is not an array."""
    raw = json.loads(text)
    if not isinstance(raw, list):
        raise ArgumentError("--args must be a JSON array")
    return raw


def default_export(names: list[str]) -> str:
    """The gateway's rule: the only export, else `_start`."""
    if len(names) == 1:
        return names[0]
    return "_start" if "_start" in names else ""


def signature_text(signature: object) -> str:
    """An export signature as `(i32, i32) -> (i32)`."""
    params = ", ".join(TYPE_NAMES.get(t, "?") for t in signature.params)  # type: ignore[attr-defined]
    results = ", ".join(TYPE_NAMES.get(t, "?") for t in signature.results)  # type: ignore[attr-defined]
    return f"({params}) -> ({results})"


def report(outcome: invocation_pb2.InvocationOutcome) -> int:
    """Prints the results as JSON (or the failure); returns the exit code."""
    sys.stdout.flush()
    if outcome.HasField("failure"):
        failure = outcome.failure
        code = failure.exit_code if failure.reason == "PROC_EXIT" else 1
        print(f"error: guest failed: {failure.reason}: {failure.message}", file=sys.stderr)
        return code or 1
    print(json.dumps(to_json(outcome.success.results)))
    return 0


def print_outcome(outcome: invocation_pb2.InvocationOutcome) -> int:
    """Writes the guest's captured stdout/stderr, then reports the outcome."""
    sys.stdout.buffer.write(outcome.stdout)
    sys.stderr.buffer.write(outcome.stderr)
    sys.stdout.flush()
    return report(outcome)
