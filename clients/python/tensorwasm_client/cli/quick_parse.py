"""Parses a command's arguments from its typer signature with argparse, for start-up.

Building a typer command loads pydantic (typer's value adapters): about half a second, more
than the rest of `tensorwasm run` before the guest starts. The `run` fast path parses its
arguments here instead, from the same signature (one definition of the options), and falls
back to typer for anything this does not cover: `--help`, an error (so usage messages stay
typer's), an option type other than str, int, float, Path or a list of str.
"""

from __future__ import annotations

import argparse
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.models import ArgumentInfo, OptionInfo

_SCALARS: dict[Any, Callable[[str], Any]] = {str: str, int: int, float: float, Path: Path}


class NeedsTyperError(Exception):
    """The arguments need typer (help, an error, or an option kind not covered here)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise NeedsTyperError(message)


def _base(annotation: Any) -> tuple[Any, bool]:
    """The annotation without `| None`, and whether it is a list (of what)."""
    args = typing.get_args(annotation)
    if type(None) in args:
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def parse(command: Callable[..., Any], argv: list[str]) -> dict[str, Any]:
    """The keyword arguments of `command` for `argv`, as typer would pass them.

    Raises:
        NeedsTyperError: typer must parse these arguments.
    """
    if any(arg in ("-h", "--help") for arg in argv):
        raise NeedsTyperError("help")
    hints = typing.get_type_hints(command, include_extras=True)
    parser = _Parser(add_help=False, allow_abbrev=False)
    for name, parameter in inspect.signature(command).parameters.items():
        hint = hints[name]
        info = next(
            (m for m in getattr(hint, "__metadata__", ()) if isinstance(m, OptionInfo)), None
        )
        annotation, many = _base(typing.get_args(hint)[0] if _annotated(hint) else hint)
        convert = _SCALARS.get(annotation)
        if convert is None:
            raise NeedsTyperError(f"{name}: {annotation!r}")
        default = None if parameter.default is inspect.Parameter.empty else parameter.default
        if info is None:  # a positional argument
            parser.add_argument(name, type=convert, nargs="*" if many else None)
            continue
        # typer.Option("--dir", ...) in an Annotated: the first name arrives as `default`
        named = [info.default] if isinstance(info.default, str) else []
        decls = [d for d in [*named, *(info.param_decls or ())] if d.startswith("-")]
        decls = decls or [f"--{name.replace('_', '-')}"]
        action = "append" if many else "store"
        parser.add_argument(*decls, dest=name, type=convert, action=action, default=default)
    return vars(parser.parse_intermixed_args(argv))


def _annotated(hint: Any) -> bool:
    return any(isinstance(m, (ArgumentInfo, OptionInfo)) for m in getattr(hint, "__metadata__", ()))
