"""The `tensorwasm` command line (typer): `app` is the command tree (`tree`), `main` the
console script (`entry`).

`app` is loaded on first use: the console script starts `tensorwasm run` from here without
the tree (the gateway client, every other command).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from tensorwasm_client.cli.tree import app

        return app
    if name == "main":
        from tensorwasm_client.cli.entry import main

        return main
    raise AttributeError(name)
