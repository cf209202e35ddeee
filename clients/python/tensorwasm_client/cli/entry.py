"""The console script: global options accepted anywhere, and `run` started light.

Kept apart from the command tree (`app`), which loads the gateway client and every
command: `tensorwasm run` needs neither.
"""

from __future__ import annotations

import os
import signal
import sys

# The global options and whether each takes a value: accepted before or after the command.
# (`--tls` and `--output` are not: `up --tls` and `snapshot get --output` are the commands'.)
GLOBAL_OPTIONS = {
    "--gateway": True, "--tenant": True, "--token": True, "--data-dir": True,
    "--ca-file": True, "--cert": True, "--key": True, "--profile": True,
}  # fmt: skip


def hoist_global_options(argv: list[str]) -> list[str]:
    """`argv` with the global options found after the command moved before it, so
    `tensorwasm up --data-dir D` works as `tensorwasm --data-dir D up`. Nothing after a
    `--` (the guest's argv) is touched."""
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest += argv[index:]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in arg
            front += argv[index : index + 1 + int(takes_value)]
            index += 1 + int(takes_value)
            continue
        rest.append(arg)
        index += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    """The console script: runs one command and exits with its code."""
    # Output piped into a reader that stops early (`| head`) ends the process quietly, as
    # it does any Unix tool, not with a BrokenPipeError traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    command = _command_index(args)
    if command is not None and args[command] == "run":  # fast path: no gateway client
        from tensorwasm_client.cli.run import run_main

        code = run_main(args[command + 1 :])
        # Straight out, as `wasmtime run` does: wasmtime's runtime threads must not meet
        # the interpreter's finalisation (a WASI guest's tokio worker can abort it then).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    from tensorwasm_client.cli.tree import run_app

    run_app(args)


def _command_index(args: list[str]) -> int | None:
    """Where the command is in hoisted `args` (after the global options), if anywhere."""
    index = 0
    while index < len(args) and args[index].split("=", 1)[0] in GLOBAL_OPTIONS:
        index += 1 if "=" in args[index] else 2
    return index if index < len(args) else None
