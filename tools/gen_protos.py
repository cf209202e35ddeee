"""Generate (or check) the Python code for protos/ with grpcio-tools and mypy-protobuf."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generate(out_dir: Path) -> None:
    sources = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)


def _generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*.py*") if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if checked-in code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        _generate(fresh_root)
        fresh = _generated_files(fresh_root)
        current = _generated_files(PROTO_ROOT)
        stale = sorted(
            str(rel)
            for rel in fresh | current
            if rel not in fresh
            or rel not in current
            or not filecmp.cmp(fresh_root / rel, PROTO_ROOT / rel, shallow=False)
        )
        if args.check:
            if stale:
                print("generated code is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            print(f"generated code is fresh ({len(fresh)} files)")
            return 0
        for rel in current - fresh:
            (PROTO_ROOT / rel).unlink()
        for rel in fresh:
            shutil.copyfile(fresh_root / rel, PROTO_ROOT / rel)
        print(f"generated {len(fresh)} files under protos/tensorwasm ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
