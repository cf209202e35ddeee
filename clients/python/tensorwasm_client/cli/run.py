"""`tensorwasm run FILE`: a module run in-process on the executor's sandbox, no services."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tensorwasm_client.cli.common import add_wasi_flags, env_pairs, json_args, print_outcome
from tensorwasm_client.local_run import run_local


def add_parser(commands: Any) -> None:
    """Adds `run` to the CLI's subcommands."""
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
    add_wasi_flags(run, directory_help="host directory the guest may read")


def run(args: argparse.Namespace) -> int:
    """Runs the module; prints its output and results, exits as `invoke` does."""
    outcome = run_local(
        args.file,
        export=args.export,
        json_args=json_args(args.args),
        argv=args.guest_argv,
        env=env_pairs(args.env),
        read_only_dir=args.dir or None,
        guest_dir=args.guest_dir,
        stdin=args.stdin.read_bytes() if args.stdin else b"",
        timeout_seconds=args.timeout,
        fuel=args.fuel,
    )
    return print_outcome(outcome)
