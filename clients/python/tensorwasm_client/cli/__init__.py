"""The `tensorwasm` command line."""

from tensorwasm_client.cli.app import main

__all__ = ["main"]
