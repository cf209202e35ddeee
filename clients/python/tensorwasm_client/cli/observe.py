"""`tensorwasm observe`: a live board of the fleet in the terminal, redrawn every interval
from the services' metrics (see tensorwasm_client.observe)."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.console import Console, RenderableType
from rich.live import Live

from tensorwasm_client.cli.common import global_options
from tensorwasm_client.cli.metrics import MetricsSources, metrics_sources
from tensorwasm_client.observe.board import Board, SourceState, build_board, source_kind
from tensorwasm_client.observe.render import render
from tensorwasm_client.observe.scrape import Scrape, ScrapeError, scrape


def observe(
    ctx: typer.Context,
    *,
    sources: MetricsSources = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, help="seconds between refreshes")
    ] = 2.0,
    once: Annotated[
        bool, typer.Option("--once", help="print one frame and exit (1 if a source failed)")
    ] = False,
) -> int:
    """Watch the fleet: calls/s, errors by reason, P50/P99, per-tenant usage, executor
    admission, the dispatcher's queue and GPU time, the store's usage.

    Reads every service's Prometheus metrics (the local stack's, or --metrics NAME=ADDRESS
    for each), redrawing every --interval seconds until Ctrl-C. With --once: one frame
    (with --output json, the frame as JSON).
    """
    addresses = metrics_sources(global_options(ctx).data_dir, sources)
    if once:
        board = _frame(addresses)
        if global_options(ctx).output == "json":
            print(json.dumps(board.to_json()))
        else:
            _console().print(_drawn(board))
        for source in board.sources:
            if source.error:
                print(f"error: {source.name}: {source.error}", file=sys.stderr)
        return 1 if any(source.error for source in board.sources) else 0
    return _live(addresses, interval)


def _frame(
    addresses: dict[str, str], previous: Board | None = None, elapsed_seconds: float = 0.0
) -> Board:
    """Scrapes every source once and builds the board (a failed source is marked, not
    fatal: the board shows what the others say)."""
    scrapes: dict[str, Scrape] = {}
    states = []
    for name, address in addresses.items():
        try:
            found = scrape(address)
        except ScrapeError as exc:
            states.append(SourceState(name, address, str(exc)))
            continue
        states.append(SourceState(name, address))
        kind = source_kind(name)
        scrapes[kind] = scrapes[kind] + found if kind in scrapes else found
    return build_board(scrapes, tuple(states), previous, elapsed_seconds)


def _live(addresses: dict[str, str], interval_seconds: float) -> int:
    """Redraws the board every interval until Ctrl-C (which ends it with exit 0)."""
    previous: Board | None = None
    taken = time.monotonic()
    board = _frame(addresses)
    try:
        with Live(_drawn(board), console=_console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval_seconds)
                previous, before = board, taken
                taken = time.monotonic()
                board = _frame(addresses, previous, taken - before)
                live.update(_drawn(board), refresh=True)
    except KeyboardInterrupt:
        return 0


def _drawn(board: Board) -> RenderableType:
    return render(board, title=f"tensorwasm observe  {time.strftime('%H:%M:%S')}")


def _console() -> Console:
    return Console(highlight=False)
