"""`tensorwasm metrics`: a service's Prometheus metrics (the gateway's by default), readable:
one family a block, each series a line, histograms summed up as count, sum, P50 and P99."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from tensorwasm_client.cli.common import global_options
from tensorwasm_client.observe.scrape import (
    Family,
    Sample,
    Scrape,
    fetch,
    histogram_quantile,
    is_created,
    metrics_url,
    parse,
)
from tensorwasm_client.stack import LocalStack, StackError

# Families of the Prometheus client itself (the process and the interpreter), shown by --all.
_RUNTIME_PREFIXES = ("python_", "process_")

MetricsSources = Annotated[
    list[str] | None,
    typer.Option(
        "--metrics",
        help="a service's metrics endpoint, NAME=HOST:PORT or NAME=URL (repeat; "
        "default: the local stack's)",
        metavar="NAME=ADDRESS",
        show_default=False,
    ),
]


def metrics_sources(data_dir: Path, entries: list[str] | None) -> dict[str, str]:
    """`--metrics NAME=ADDRESS` entries, else every service of the local stack in
    `data_dir` that serves metrics.

    Raises:
        ValueError: an entry is not NAME=ADDRESS.
        StackError: no entry, and no local stack is recorded there.
    """
    if entries:
        sources = {}
        for entry in entries:
            name, sep, address = entry.partition("=")
            if not sep or not name or not address:
                raise ValueError(f"--metrics takes NAME=ADDRESS, got {entry!r}")
            sources[name] = address
        return sources
    recorded = {
        name: service.metrics_address
        for name, service in LocalStack(data_dir).services().items()
        if service.metrics_address
    }
    if not recorded:
        raise StackError(
            f"no stack recorded in {data_dir}: start one with tensorwasm up, or name the "
            "endpoints with --metrics NAME=HOST:PORT"
        )
    return recorded


def metrics(
    ctx: typer.Context,
    pattern: Annotated[
        str, typer.Argument(help="show only the families whose name contains this")
    ] = "",
    *,
    service: Annotated[
        str, typer.Option(help="the local stack's service whose metrics to show")
    ] = "gateway",
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar="TENSORWASM_METRICS_URL",
            help="metrics endpoint to read, HOST:PORT or URL (beats --service)",
            show_default=False,
        ),
    ] = "",
    show_all: Annotated[
        bool,
        typer.Option("--all", help="also the process and Python runtime families"),
    ] = False,
    raw: Annotated[bool, typer.Option("--raw", help="print the Prometheus text as served")] = False,
) -> int:
    """Show a service's metrics (the gateway's by default), readable.

    Each family: its name, type and help, then one line per series (labels, value);
    a histogram's series as count, sum, P50 and P99. `--output json` prints the samples.
    """
    if url:
        address = url
    else:
        sources = metrics_sources(global_options(ctx).data_dir, None)
        if service not in sources:
            raise StackError(
                f"no service {service!r} with metrics in the stack (one of: {', '.join(sources)})"
            )
        address = sources[service]
    text = fetch(metrics_url(address))
    if raw:
        print(text, end="")
        return 0
    families = [
        family
        for family in parse(text)
        if pattern in family.name and (show_all or not family.name.startswith(_RUNTIME_PREFIXES))
    ]
    if global_options(ctx).output == "json":
        print(json.dumps([_sample_json(family, s) for family in families for s in family.samples
                          if show_all or not is_created(s)]))  # fmt: skip
        return 0
    blocks = [_block(family, show_all) for family in families]
    print("\n\n".join(block for block in blocks if block))
    return 0


def _sample_json(family: Family, sample: Sample) -> dict[str, object]:
    return {"family": family.name, "type": family.type, "name": sample.name,
            "labels": dict(sample.labels), "value": sample.value}  # fmt: skip


def _block(family: Family, show_all: bool) -> str:
    """A family as text: `name (type): help`, then its series; "" when it has none."""
    if family.type == "histogram":
        lines = _histogram_lines(family)
    else:
        samples = [s for s in family.samples if show_all or not is_created(s)]
        width = max((len(_labels(s.labels)) for s in samples), default=0)
        lines = [f"  {_labels(s.labels):<{width}}  {_number(s.value)}" for s in samples]
    if not lines:
        return ""
    return "\n".join([f"{family.name} ({family.type}): {family.help}", *lines])


def _histogram_lines(family: Family) -> list[str]:
    """One line per series of a histogram: count, sum, P50, P99 (bucket-interpolated)."""
    scrape = Scrape([family])
    series: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for sample in family.samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        suffix = sample.name.removeprefix(family.name)
        if suffix in ("_count", "_sum"):
            series.setdefault(key, {})[suffix] = sample.value
    rows = []
    for key, values in series.items():
        labels = dict(key)
        buckets = scrape.buckets(family.name, labels)
        p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
        rows.append((
            _labels(labels),
            f"count {_number(values.get('_count', 0))}  sum {_number(values.get('_sum', 0))}"
            f"  p50 {_number(p50)}  p99 {_number(p99)}",
        ))  # fmt: skip
    width = max((len(labels) for labels, _ in rows), default=0)
    return [f"  {labels:<{width}}  {summary}" for labels, summary in rows]


def _labels(labels: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in labels.items()) or "-"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
