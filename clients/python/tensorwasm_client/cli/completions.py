"""`tensorwasm completions SHELL`: the shell completion script, printed or written to a
directory (typer's own scripts; `tensorwasm --install-completion` installs one instead)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer._completion_shared import get_completion_script

PROG_NAME = "tensorwasm"
# The variable the console script reads to answer a completion request.
COMPLETE_VAR = "_TENSORWASM_COMPLETE"


class Shell(StrEnum):
    """The shells typer completes for."""

    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"
    POWERSHELL = "powershell"


# The file each shell loads completions from, by its usual name.
FILE_NAMES = {
    Shell.BASH: f"{PROG_NAME}.bash",
    Shell.ZSH: f"_{PROG_NAME}",
    Shell.FISH: f"{PROG_NAME}.fish",
    Shell.POWERSHELL: f"_{PROG_NAME}.ps1",
}


def completions(
    shell: Annotated[
        Shell, typer.Argument(help="the shell", case_sensitive=False, metavar="SHELL")
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="write the script into this directory (its usual file name)",
            show_default=False,
        ),
    ] = None,
) -> int:
    """Print the shell completion script (or write it with --out-dir).

    \b
        tensorwasm completions bash > ~/.local/share/bash-completion/completions/tensorwasm
        tensorwasm completions zsh --out-dir ~/.zfunc
    """
    script = get_completion_script(
        prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell.value
    )
    if out_dir is None:
        print(script)
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAMES[shell]
    path.write_text(script + "\n")
    print(path)
    return 0
