"""`tensorwasm run FILE`: a module run in-process on the executor's sandbox, no services."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tensorwasm_client.cli.common import (
    Deadline,
    EnvEntries,
    Fuel,
    GuestDir,
    JsonArgs,
    StdinFile,
    env_pairs,
    json_args,
    print_outcome,
    read_stdin,
)
from tensorwasm_client.local_run import run_local


def run(
    file: Annotated[Path, typer.Argument(help="the module, .wasm or .wat", metavar="FILE")],
    guest_argv: Annotated[
        list[str] | None,
        typer.Argument(
            help="the guest's arguments, after `--`", metavar="GUEST_ARG", show_default=False
        ),
    ] = None,
    *,
    export: Annotated[
        str, typer.Option(help="export to call (default: _start or the only one)")
    ] = "",
    args: JsonArgs = "[]",
    stdin: StdinFile = None,
    timeout: Deadline = 0.0,
    fuel: Fuel = 0,
    env: EnvEntries = None,
    directory: Annotated[str, typer.Option("--dir", help="host directory the guest may read")] = "",
    guest_dir: GuestDir = "/data",
) -> int:
    """Run a .wasm/.wat file locally, without the services.

    As `wasmtime run` does: prints the guest's output and results and exits as `invoke`
    does. Guest arguments follow a `--`:

    \b
        tensorwasm run app.wasm -- --verbose in.txt
    """
    outcome = run_local(
        file,
        export=export,
        json_args=json_args(args),
        argv=guest_argv or [],
        env=env_pairs(env),
        read_only_dir=directory or None,
        guest_dir=guest_dir,
        stdin=read_stdin(stdin),
        timeout_seconds=timeout,
        fuel=fuel,
    )
    return print_outcome(outcome)
