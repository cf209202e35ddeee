"""Unit tests for the CLI's transfer bars: drawn on a terminal, silent in a pipe."""

from __future__ import annotations

import io

import pytest
from tensorwasm_client.cli.progress import transfer_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_reaches_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with transfer_bar("uploading", 4 << 20) as progress:
        progress(1 << 20, 4 << 20)
        progress(4 << 20, 4 << 20)
    drawn = terminal.getvalue()
    assert "uploading" in drawn
    assert "100%" in drawn
    assert "4.0 MiB" in drawn


def test_no_bar_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with transfer_bar("uploading", 100) as progress:
        progress(100, 100)
    assert pipe.getvalue() == ""
