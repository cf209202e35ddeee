"""Runs every PTX case on the cpu backend's PTX executor and on a CUDA device, and reports
the largest difference per output (ulps for floats, absolute for integers).

    python -m tests.ptx_kernels.differential               # every case, device 0
    python -m tests.ptx_kernels.differential --only user-  # cases whose name starts so
    python -m tests.ptx_kernels.differential --json out.json

Exit status 1 when a device output misses its expectation, or when the two runs differ
where the case says they must agree (integer and exact outputs). Float outputs may differ
by the approximations' documented budgets; the report shows by how much.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.backends.cpu import CpuBackend

from tests.ptx_kernels.cases import Exact, PtxCase, all_cases, check, largest_difference, run_case


@dataclass(frozen=True)
class Row:
    """One output of one case: how far the device and the cpu executor are apart."""

    case: str
    output: int
    dtype: str
    largest_difference: float
    unit: str
    must_agree: bool
    device_ok: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.device_ok and not (self.must_agree and self.largest_difference)


def compare(case: PtxCase, cpu: Backend, device: Backend) -> list[Row]:
    """Runs `case` on both backends; one row per expected output."""
    on_cpu = run_case(cpu, case)
    on_device = run_case(device, case)
    detail = ""
    try:
        check(case, on_device)
        device_ok = True
    except AssertionError as exc:
        device_ok, detail = False, str(exc).strip().splitlines()[0]
    rows = []
    for index in case.expected:
        got, other = on_device[index], on_cpu[index]
        rule = case.compare.get(index, Exact())
        rows.append(
            Row(case.name, index, str(got.dtype), largest_difference(case, index, got, other),
                "ulps" if got.dtype.kind == "f" else "abs", isinstance(rule, Exact) and
                got.dtype.kind != "f", device_ok, detail)
        )  # fmt: skip
    return rows


def run(cases: Sequence[PtxCase], device: Backend, cpu: Backend | None = None) -> list[Row]:
    """Compares every case; a case that fails to run on either side is a failed row."""
    cpu = cpu or CpuBackend()
    rows: list[Row] = []
    for case in cases:
        try:
            rows.extend(compare(case, cpu, device))
        except Exception as exc:
            rows.append(Row(case.name, -1, "-", float("inf"), "-", True, False, repr(exc)))
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    width = max((len(row.case) for row in rows), default=10)
    lines = [f"{'case':<{width}}  out  dtype    largest diff  device  {'':<4}"]
    for row in rows:
        status = "ok" if row.ok else "FAIL"
        lines.append(
            f"{row.case:<{width}}  {row.output:>3}  {row.dtype:<7}  "
            f"{row.largest_difference:>8g} {row.unit:<4} {'ok' if row.device_ok else 'off':<6}"
            f"  {status} {row.detail}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ptx_kernels.differential")
    parser.add_argument("--only", default="", help="run the cases whose name starts so")
    parser.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    from tensorwasm_dispatcher.backends.cuda import CudaBackend  # needs a driver

    device = CudaBackend(args.device)
    try:
        cases = [case for case in all_cases() if case.name.startswith(args.only)]
        rows = run(cases, device)
    finally:
        device.close()
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    failed = [row for row in rows if not row.ok]
    print(f"{len(rows)} outputs of {len(cases)} cases; {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
