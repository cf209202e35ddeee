"""`tensorwasm run FILE`: a module run in-process on the executor's sandbox, no services."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer
from tensorwasm.common.v1.values_json import ArgumentError

from tensorwasm_client.cli.options import (
    EnvEntries,
    Fuel,
    GuestDir,
    JsonArgs,
    env_pairs,
    exit_code_for,
    json_args,
)
from tensorwasm_client.local_run import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_RUN_TIMEOUT_SECONDS,
    run_local,
)


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
    stdin: Annotated[
        str | None,
        typer.Option(
            "--stdin",
            help="file the guest reads on stdin, '-' for this process's stdin "
            "(default: this process's stdin when it is not a terminal)",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="guest deadline in seconds (0: none)")
    ] = DEFAULT_RUN_TIMEOUT_SECONDS,
    fuel: Fuel = 0,
    max_output: Annotated[
        int,
        typer.Option("--max-output", help="cap on each of stdout and stderr, in bytes"),
    ] = DEFAULT_MAX_OUTPUT_BYTES,
    env: EnvEntries = None,
    directory: Annotated[str, typer.Option("--dir", help="host directory the guest may read")] = "",
    guest_dir: GuestDir = "/data",
) -> int:
    """Run a .wasm/.wat file locally, without the services.

    Like `wasmtime run`: the guest's stdin, stdout and stderr pass through as it runs,
    results are printed (as JSON) only for an export that returns values, Ctrl-C stops
    the guest (exit 130), a trap exits 1 and proc_exit(n) exits n. Guest arguments follow
    a `--` (argv[0] is the file's name):

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
        stdin=_stdin_bytes(stdin),
        timeout_seconds=timeout,
        fuel=fuel,
        on_output=_write_through,
        max_output_bytes=max_output,
    )
    sys.stdout.flush()
    for stream, truncated in (
        ("stdout", outcome.stdout_truncated),
        ("stderr", outcome.stderr_truncated),
    ):
        if truncated:
            print(
                f"warning: the guest's {stream} was cut at {max_output} bytes (--max-output)",
                file=sys.stderr,
            )
    if outcome.results is None:
        print(
            f"error: guest failed: {outcome.failure_reason}: {outcome.failure_message}",
            file=sys.stderr,
        )
        return (outcome.exit_code or 1) if outcome.failure_reason == "PROC_EXIT" else 1
    if outcome.has_results:
        print(json.dumps(outcome.results))
    return 0


def _stdin_bytes(stdin: str | None) -> bytes:
    """`--stdin FILE`, `--stdin -`, or this process's stdin when it is a pipe or a file
    (read whole before the guest starts; a terminal is never read unasked)."""
    if stdin == "-" or (stdin is None and _piped(sys.stdin)):
        return sys.stdin.buffer.read()
    return Path(stdin).read_bytes() if stdin else b""


def _piped(stream: TextIO) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return not stream.isatty()  # no descriptor (an in-process runner): read it
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _write_through(stream: str, data: bytes) -> None:
    """Writes a chunk of the guest's output as it comes (on the guest's thread)."""
    sink = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    sink.write(data)
    sink.flush()


# The refusals of `run`: it talks to no service, so no client or stack errors.
RUN_ERRORS = (ArgumentError, OSError, ValueError)


def run_main(args: list[str]) -> int:
    """`tensorwasm run ARGS` on its own, without loading the gateway client, the other
    commands or (for arguments `quick_parse` covers) typer's value adapters; returns the
    exit code. Help and usage errors go to typer."""
    from tensorwasm_client.cli import quick_parse

    try:
        options = quick_parse.parse(run, args)
    except quick_parse.NeedsTyperError:
        app = typer.Typer(
            add_completion=False,
            context_settings={"help_option_names": ["-h", "--help"]},
            rich_markup_mode=None,
            pretty_exceptions_enable=False,
        )
        app.command()(exit_code_for(RUN_ERRORS)(run))
        try:
            app(args=args, prog_name="tensorwasm run")
        except SystemExit as exited:
            return exited.code if isinstance(exited.code, int) else 1
        return 0
    try:
        exit_code_for(RUN_ERRORS)(run)(**options)
    except typer.Exit as exited:
        return exited.exit_code
    return 0
