"""The options several `tensorwasm` commands share, spelled once, and their parsing.

Light on purpose (typer and the value codec only, no grpc): `tensorwasm run` starts from
here without loading the gateway client.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec

import typer
from tensorwasm.common.v1.values_json import ArgumentError

P = ParamSpec("P")


def exit_code_for(
    errors: tuple[type[BaseException], ...],
) -> Callable[[Callable[P, int]], Callable[P, None]]:
    """A decorator for commands that return their exit code: `errors` print
    `error: ...` and exit 1, Ctrl-C prints `error: interrupted` and exits 130."""

    def wrap(command: Callable[P, int]) -> Callable[P, None]:
        return _exit_code(command, errors)

    return wrap


def _exit_code(
    command: Callable[P, int], errors: tuple[type[BaseException], ...]
) -> Callable[P, None]:
    """Wraps a command that returns its exit code: refusals print `error: ...` and exit 1,
    Ctrl-C prints `error: interrupted` and exits 130 (a streaming call is cancelled on the
    way out)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            code = command(*args, **kwargs)
        except errors as exc:
            typer.echo(f"error: {exc}", err=True)
            hint = _hint_for(exc)
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
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(
            f"--args is not JSON ({exc.msg} at character {exc.pos}): give a JSON array, "
            "e.g. --args '[1, 2.5, \"nan\"]'"
        ) from None
    if not isinstance(raw, list):
        raise ArgumentError("--args must be a JSON array")
    return raw


def read_stdin(path: Path | None) -> bytes:
    """The bytes of the `--stdin` file, or none."""
    return path.read_bytes() if path else b""


def _hint_for(exc: BaseException) -> str:
    """What to do next about a refusal with a catalogued reason ("" for anything else);
    the hints load only then, so `run`'s start-up never imports the gateway client."""
    if not getattr(exc, "reason", None):
        return ""
    from tensorwasm_client.cli.hints import hint_for
    from tensorwasm_client.errors import TensorWasmError

    return hint_for(exc) if isinstance(exc, TensorWasmError) else ""
