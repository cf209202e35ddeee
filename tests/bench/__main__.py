"""Command line: `python -m tests.bench --out DIR [--groups A,B] [--quick]`; only reports."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.bench.harness import RunConfig, format_table, load_groups, run_group, write_report


def _parse(argv: Sequence[str], available: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Runs benchmark groups and writes <out>/<group>.json; never fails on timing.",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument(
        "--groups", default="", help=f"comma list of groups (default all: {', '.join(available)})"
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke sizing (~300 samples)")
    parser.add_argument("--samples", type=int, help="samples per benchmark (default 2000)")
    parser.add_argument("--warmup", type=int, help="untimed calls per benchmark (default 200)")
    parser.add_argument("--blocks", type=int, help="interleaved blocks (default 10)")
    parser.add_argument(
        "--raw-samples", action="store_true", help="also write every sample to the JSON"
    )
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> RunConfig:
    base = RunConfig.quick_config() if args.quick else RunConfig()
    return RunConfig(
        samples=base.samples if args.samples is None else args.samples,
        warmup=base.warmup if args.warmup is None else args.warmup,
        blocks=base.blocks if args.blocks is None else args.blocks,
        quick=args.quick,
        raw_samples=args.raw_samples,
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # An exception, unlike the default action, unwinds the groups so their teardown runs.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected groups in turn; exit status 0 unless a group could not run."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    registry = load_groups()
    available = sorted(registry)
    args = _parse(sys.argv[1:] if argv is None else argv, available)
    if args.list:
        print("\n".join(available))
        return 0
    selected = [g.strip() for g in args.groups.split(",") if g.strip()] or available
    unknown = [g for g in selected if g not in registry]
    if unknown:
        print(f"unknown group(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    try:
        config = _config(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    for name in selected:
        report = run_group(name, registry[name], config)
        path = write_report(report, args.out)
        print(format_table(report))
        print(f"-> {path}\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
