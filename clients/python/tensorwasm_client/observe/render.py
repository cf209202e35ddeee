"""The board drawn with rich: a few small tables, one per part of the fleet."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tensorwasm_client.observe.board import Board


def render(board: Board, *, title: str = "tensorwasm observe") -> RenderableType:
    """The board as one rich renderable."""
    parts: list[RenderableType] = [Text(title, style="bold")]
    span = "(last interval)" if board.latency_window else "(since start)"
    parts.append(_pairs("calls", [
        ("calls", str(board.calls_total)),
        ("calls/s", "-" if board.calls_per_second is None else f"{board.calls_per_second:.1f}"),
        ("errors", str(board.errors_total)),
        (f"p50 {span}", _seconds(board.latency_p50_seconds)),
        (f"p99 {span}", _seconds(board.latency_p99_seconds)),
    ]))  # fmt: skip
    parts.append(_counts("errors by reason", "reason", board.errors_by_reason))
    tenants = Table(title="tenants", title_justify="left")
    for column in ("tenant", "calls", "errors", "gpu time", "launches", "staged"):
        tenants.add_column(column, justify="left" if column == "tenant" else "right")
    for row in board.tenants:
        tenants.add_row(
            row.tenant, str(row.calls), str(row.errors), _seconds(row.gpu_seconds),
            str(row.kernel_launches), _bytes(row.staged_bytes),
        )  # fmt: skip
    parts.append(tenants)
    parts.append(_pairs("executor", [
        ("in flight", f"{board.executor_in_flight}/{board.executor_in_flight_limit}"),
        ("queued", str(board.executor_queued_calls)),
        ("instances", str(board.active_instances)),
        *((f"refused {cause}", str(count)) for cause, count in board.executor_refusals.items()),
    ]))  # fmt: skip
    parts.append(_pairs("dispatcher", [
        ("queued", str(board.dispatcher_queued_batches)),
        ("workers", str(board.dispatcher_workers)),
        ("gpu time", _seconds(board.gpu_seconds_total)),
        ("launches", str(board.kernel_launches_total)),
    ]))  # fmt: skip
    parts.append(_pairs("store", [
        ("objects", _count(board.store_objects)),
        ("bytes", _bytes(board.store_bytes)),
        ("at rest", _bytes(board.store_bytes_at_rest)),
        ("refs", _count(board.store_refs)),
    ]))  # fmt: skip
    sources = Table(title="sources", title_justify="left")
    for column in ("source", "address", "state"):
        sources.add_column(column)
    for source in board.sources:
        sources.add_row(source.name, source.address, source.error or "ok")
    parts.append(sources)
    return Group(*parts)


def _pairs(title: str, pairs: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for name, _ in pairs:
        table.add_column(name, justify="right")
    table.add_row(*(value for _, value in pairs))
    return table


def _counts(title: str, key: str, counts: Mapping[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column("count", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    return table


def _seconds(seconds: float | None) -> str:
    """`-`, `820 µs`, `12.5 ms`, `1.25 s`."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _bytes(size: int | None) -> str:
    """`-`, `512 B`, `1.5 KiB`, `3.0 MiB`."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
