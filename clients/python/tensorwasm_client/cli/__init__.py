"""The `tensorwasm` command line (typer): `app` is the command tree, `main` the console script."""

from tensorwasm_client.cli.app import app, main

__all__ = ["app", "main"]
