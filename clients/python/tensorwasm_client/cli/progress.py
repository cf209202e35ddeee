"""Progress bars for the CLI's transfers (uploads, snapshot downloads), on stderr.

Shown only when stderr is a terminal: scripts and pipes see no bar and no escape codes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from tensorwasm_client.uploads import Progress

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


@contextmanager
def transfer_bar(label: str, total_bytes: int) -> Iterator[Progress]:
    """A `progress(done_bytes, total_bytes)` callback drawing a bar while the block runs."""
    if not sys.stderr.isatty():
        yield _ignore
        return
    drawn: ProgressBar[int] = click.progressbar(
        length=total_bytes,
        label=label,
        file=sys.stderr,
        show_percent=True,
        show_eta=True,
        item_show_func=lambda _: f"{_mib(total_bytes)} MiB",
    )
    with drawn as bar:
        shown = 0

        def update(done_bytes: int, _total: int) -> None:
            nonlocal shown
            bar.update(done_bytes - shown)
            shown = done_bytes

        yield update


def _ignore(_done: int, _total: int) -> None:
    return None


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / (1 << 20):.1f}"
