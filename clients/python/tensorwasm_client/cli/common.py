"""What the `tensorwasm` commands share: global options, exit codes (and the error line
with its hint), arguments, outcome printing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ParamSpec

import typer
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_json import TYPE_NAMES, ArgumentError, to_json

from tensorwasm_client.cli.hints import hint_for
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.stack import StackError

P = ParamSpec("P")

# A refusal the user can act on: printed as `error: ...`, exit code 1.
_COMMAND_ERRORS = (TensorWasmError, StackError, ArgumentError, OSError, ValueError)


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command: where the gateway is, as whom, local state."""

    gateway: str
    tenant: str | None
    token: str | None
    data_dir: Path
    # From the config file's profile (see cli/config.py).
    ca_file: Path | None = None
    tls: bool = False
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
    """A gateway client for the global `--gateway`, `--tenant` and `--token` options."""
    options = global_options(ctx)
    return GatewayClient(
        options.gateway,
        tenant=options.tenant,
        token=options.token,
        tls=options.tls,
        ca_file=options.ca_file,
    )


def exit_code(command: Callable[P, int]) -> Callable[P, None]:
    """Wraps a command that returns its exit code: refusals print `error: ...` and exit 1,
    Ctrl-C prints `error: interrupted` and exits 130 (a streaming call is cancelled on the
    way out)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            code = command(*args, **kwargs)
        except _COMMAND_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            hint = hint_for(exc) if isinstance(exc, TensorWasmError) else ""
            if hint:
                typer.echo(f"hint: {hint}", err=True)
            code = 1
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            code = 130
        if code:
            raise typer.Exit(code)

    return run


# Options several commands take, spelled once.
Export = Annotated[str, typer.Option(help="export to call (default: the only one)")]
JsonArgs = Annotated[str, typer.Option("--args", help="JSON array of arguments")]
StdinFile = Annotated[
    Path | None, typer.Option("--stdin", help="file whose bytes the guest reads on stdin")
]
Deadline = Annotated[float, typer.Option("--timeout", help="guest deadline in seconds")]
Fuel = Annotated[int, typer.Option("--fuel", help="instruction budget (0: unmetered)")]
EnvEntries = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        help="guest environment variable (repeat)",
        metavar="NAME=value",
        show_default=False,
    ),
]
GuestDir = Annotated[str, typer.Option("--guest-dir", help="where the guest sees --dir")]


def env_pairs(entries: list[str] | None) -> list[tuple[str, str]]:
    """The `--env NAME=value` entries as pairs; raises ArgumentError for a malformed one."""
    pairs = []
    for entry in entries or ():
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


def read_stdin(path: Path | None) -> bytes:
    """The bytes of the `--stdin` file, or none."""
    return path.read_bytes() if path else b""


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
    """Writes the guest's captured stdout/stderr and the chunks it emitted (wasi:tensor,
    to stdout), then reports the outcome."""
    sys.stdout.buffer.write(outcome.stdout)
    sys.stdout.buffer.write(outcome.chunks)
    sys.stderr.buffer.write(outcome.stderr)
    sys.stdout.flush()
    return report(outcome)
