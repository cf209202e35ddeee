"""Regenerates (or, with --check, verifies) the user kernels' PTX with nvcc."""

from __future__ import annotations

import argparse
import sys

from tensorwasm_kernels.ptxgen import find_tool

from tests.ptx_kernels import PTX_DIR, USER_KERNELS, generate


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ptx_kernels")
    parser.add_argument("--check", action="store_true", help="fail if a .ptx is stale")
    args = parser.parse_args()
    nvcc = find_tool("nvcc")
    if nvcc is None:
        print("nvcc not found (make cuda-tools)", file=sys.stderr)
        return 2
    stale = []
    for name in USER_KERNELS:
        target = PTX_DIR / f"{name}.ptx"
        text = generate(name, nvcc)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text, encoding="utf-8", newline="\n")
    print(f"{'stale' if args.check else 'written'}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
