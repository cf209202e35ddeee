"""Every command the README shows is one the code accepts.

Honest about what it does: `tensorwasm ...` lines are parsed by the CLI's own command tree
(options, arguments, subcommands; nothing runs, since most need the services or files of
the reader's); `make ...` lines are dry-run (`make -n`: the target exists and expands).
`make demo` itself runs in CI (.ci/run), and the guest guide's commands run in
tests/integration/test_guest_guide.py. `curl` lines need a running gateway: listed, not run.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import typer
from tensorwasm_client.cli import app
from tensorwasm_client.cli.entry import hoist_global_options

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NOT_RUN = ("curl ", "grpcurl ")


def shell_lines() -> list[str]:
    """The README's lines inside ```sh blocks, without their comments."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = line == "```sh"
            continue
        if inside and line.strip():
            lines.append(line.split("  #", 1)[0].strip())
    return lines


def parse(args: list[str]) -> list[str]:
    """Parses `tensorwasm ARGS` down to its command; returns the command path."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("tensorwasm", hoist_global_options(args))
    path = []
    while hasattr(command, "resolve_command"):  # a group (typer bundles its own click)
        rest = [*getattr(ctx, "protected_args", ctx._protected_args), *ctx.args]
        name, sub, remaining = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None, args
        path.append(name)
        ctx = sub.make_context(name, remaining, parent=ctx)
        command = sub
    return path


def test_the_readme_shows_commands() -> None:
    lines = shell_lines()
    assert sum(line.startswith(".venv/bin/tensorwasm") for line in lines) >= 15
    assert any(line.startswith("make ") for line in lines)


def test_every_tensorwasm_line_parses() -> None:
    parsed = []
    for line in shell_lines():
        command = line.split("|", 1)[-1].strip()  # `echo hi | tensorwasm ...`
        if not command.startswith(".venv/bin/tensorwasm"):
            continue
        args = shlex.split(command)[1:]
        try:
            path = parse(args)
        except Exception as exc:  # a usage error of the command tree
            raise AssertionError(f"README line does not parse: {line}\n{exc}") from None
        parsed.append(path)
    assert ["up"] in parsed and ["run"] in parsed and ["instance", "create"] in parsed


def test_every_make_line_names_a_target() -> None:
    for line in shell_lines():
        if not line.startswith("make "):
            continue
        target = shlex.split(line)[1]
        planned = subprocess.run(
            ["make", "-n", "--no-print-directory", target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert planned.returncode == 0, (line, planned.stderr)


def test_the_lines_not_run_are_only_network_calls() -> None:
    others = [
        line
        for line in shell_lines()
        if not line.split("|", 1)[-1].strip().startswith((".venv/bin/tensorwasm", "make "))
    ]
    assert all(line.startswith(NOT_RUN) for line in others), others
