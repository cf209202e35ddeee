"""What the `tensorwasm` commands share: global options, exit codes (and the error line
with its hint), arguments, outcome printing."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec

import typer
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_json import TYPE_NAMES, ArgumentError, to_json

from tensorwasm_client.cli.options import (
    Deadline,
    EnvEntries,
    Export,
    Fuel,
    GuestDir,
    JsonArgs,
    StdinFile,
    env_pairs,
    exit_code_for,
    json_args,
    read_stdin,
)
from tensorwasm_client.client import GatewayClient, TensorWasmError, TlsOptions
from tensorwasm_client.stack import StackError

P = ParamSpec("P")
__all__ = [
    "Deadline", "EnvEntries", "Export", "Fuel", "GlobalOptions", "GuestDir", "JsonArgs",
    "StdinFile", "client_for", "default_export", "env_pairs", "exit_code", "global_options",
    "json_args", "print_outcome", "read_stdin", "report", "signature_text",
]  # fmt: skip

# A refusal the user can act on: printed as `error: ...`, exit code 1.
_COMMAND_ERRORS = (TensorWasmError, StackError, ArgumentError, OSError, ValueError)


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command: where the gateway is, as whom, local state."""

    gateway: str
    tenant: str | None
    token: str | None
    data_dir: Path
    # TLS to the gateway (flags, else the config file's profile); None: plaintext.
    tls: TlsOptions | None = None
    # The config file's profile in use (see cli/config.py).
    profile: str = ""
    # `--output`: "json", "table", or "" for each command's usual form.
    output: str = ""


def global_options(ctx: typer.Context) -> GlobalOptions:
    """The global options, as the root callback stored them on the context."""
    found = ctx.find_object(GlobalOptions)
    if found is None:  # only a command invoked without the root group gets here
        raise RuntimeError("tensorwasm commands run under the tensorwasm group")
    return found


def client_for(ctx: typer.Context) -> GatewayClient:
    """A gateway client for the global `--gateway`, `--tenant`, `--token` and TLS options."""
    options = global_options(ctx)
    return GatewayClient(
        options.gateway, tenant=options.tenant, token=options.token, tls=options.tls
    )


def exit_code(command: Callable[P, int]) -> Callable[P, None]:
    """Wraps a command that returns its exit code (see `options.exit_code_for`): the
    refusals of every command print `error: ...` and exit 1."""
    return exit_code_for(_COMMAND_ERRORS)(command)


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
    for stream, truncated in (
        ("stdout", outcome.stdout_truncated),
        ("stderr", outcome.stderr_truncated),
    ):
        if truncated:
            print(
                f"warning: the guest's {stream} was cut at the call's output cap "
                "(the tenant's max_output_bytes limit, TENSORWASM_EXECUTOR_MAX_OUTPUT_BYTES)",
                file=sys.stderr,
            )
    if outcome.HasField("failure"):
        failure = outcome.failure
        code = failure.exit_code if failure.reason == "PROC_EXIT" else 1
        print(f"error: guest failed: {failure.reason}: {failure.message}", file=sys.stderr)
        return code or 1
    print(json.dumps(to_json(outcome.success.results)))
    return 0


def print_outcome(outcome: invocation_pb2.InvocationOutcome) -> int:
    """Writes the guest's captured stdout/stderr and the chunks it emitted (wasi:tensor,
    to stdout), then reports the outcome."""
    sys.stdout.buffer.write(outcome.stdout)
    sys.stdout.buffer.write(outcome.chunks)
    sys.stderr.buffer.write(outcome.stderr)
    sys.stdout.flush()
    return report(outcome)
