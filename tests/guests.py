"""The SDK's example guests for tests: tools/build_guests.py (as `make guests` runs it) and
the `tensorwasm` CLI that deploys and invokes them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "tools" / "build_guests.py"
TENSORWASM = Path(sys.executable).parent / "tensorwasm"
NO_CLANG = "no clang for wasm32-wasi (clang-19, wasi-libc): run `make guest-toolchain`"


def load_builder() -> ModuleType:
    """tools/build_guests.py as a module (find_clang, render_wat, EXAMPLES, ...)."""
    spec = importlib.util.spec_from_file_location("build_guests", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_clang() -> str | None:
    """The wasm32-wasi clang the builder would use, or None."""
    clang: str | None = load_builder().find_clang()
    return clang


def build_guests(out: Path) -> list[Path]:
    """Builds every example guest into `out` (C ones only where clang is present)."""
    command = [sys.executable, str(BUILDER), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return sorted(out.glob("*.wasm"))


def cli(gateway: str, tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `tensorwasm --gateway <gateway> --tenant <tenant> <args>` (never raises)."""
    return subprocess.run(
        [str(TENSORWASM), "--gateway", gateway, "--tenant", tenant, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
