"""Build the example guests of clients/guest/examples/{cuda,tensor}: C with clang, WAT templates.

C sources are compiled with `clang --target=wasm32-wasi` (clang-19, lld-19, wasi-libc and
libclang-rt-19-dev-wasm32: `make guest-toolchain` installs them) against the SDK header
`clients/guest/include/tensorwasm/cuda.h`, embedding the kernel library's canonical PTX
with C23 `#embed`. WAT templates get the same PTX for `{{PTX:<kernel>}}` and its length
for `{{PTX_LEN:<kernel>}}`. `make guests` runs this into build/guests/.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "clients" / "guest" / "examples" / "cuda"
# C guests of wasi:tensor and wasi:scheduler (header clients/guest/include/tensorwasm/tensor.h).
TENSOR_EXAMPLES = ROOT / "clients" / "guest" / "examples" / "tensor"
INCLUDE = ROOT / "clients" / "guest" / "include"
PTX_DIR = ROOT / "kernels" / "tensorwasm_kernels" / "ptx"
WASI_SYSROOT = Path("/usr")  # Debian's wasi-libc: /usr/lib/wasm32-wasi, /usr/include/...
CLANG_FLAGS = [
    "--target=wasm32-wasi",
    "-std=c23",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-nostartfiles",  # a library of exports (no _start): each is invoked on its own
    "-Wl,--no-entry",
]
_PLACEHOLDER = re.compile(r"\{\{(PTX|PTX_LEN):([a-z0-9_]+)\}\}")


def find_clang() -> str | None:
    """A clang that can build wasm32-wasi guests (clang-19 first), or None."""
    for name in ("clang-19", "clang"):
        path = shutil.which(name)
        if path and (WASI_SYSROOT / "lib" / "wasm32-wasi" / "libc.a").exists():
            return path
    return None


def wat_string(data: bytes) -> str:
    """`data` as the inside of a WAT string literal (every unsafe byte as \\hh)."""
    safe = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
    return "".join(chr(b) if b in safe else f"\\{b:02x}" for b in data)


def render_wat(template: Path) -> str:
    """The WAT text of a template, with the kernels' PTX and lengths filled in."""

    def fill(match: re.Match[str]) -> str:
        ptx = (PTX_DIR / f"{match[2]}.ptx").read_bytes()
        return wat_string(ptx) if match[1] == "PTX" else str(len(ptx))

    return _PLACEHOLDER.sub(fill, template.read_text())


def build_wat(template: Path, out: Path) -> Path:
    """Renders and assembles one WAT template into `out/<name>.wat.wasm`."""
    import wasmtime

    target = out / f"{template.name.removesuffix('.wat.in')}.wat.wasm"
    target.write_bytes(bytes(wasmtime.wat2wasm(render_wat(template))))
    return target


def build_c(source: Path, out: Path, clang: str) -> Path:
    """Compiles one C example into `out/<name>.c.wasm`.

    Raises:
        subprocess.CalledProcessError: clang failed (its output is on stderr).
    """
    target = out / f"{source.stem}.c.wasm"
    command = [
        clang, *CLANG_FLAGS, f"--sysroot={WASI_SYSROOT}", f"-I{INCLUDE}",
        f"--embed-dir={PTX_DIR}", "-o", str(target), str(source),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return target


def build_all(out: Path, *, require_c: bool) -> list[Path]:
    """Builds every example into `out`; the C ones only where clang is found (or fails
    when `require_c`)."""
    out.mkdir(parents=True, exist_ok=True)
    built = [build_wat(template, out) for template in sorted(EXAMPLES.glob("*.wat.in"))]
    clang = find_clang()
    if clang is None:
        if require_c:
            raise SystemExit("no clang for wasm32-wasi: run `make guest-toolchain`")
        print("build_guests: no clang for wasm32-wasi; C examples skipped", file=sys.stderr)
        return built
    sources = sorted(EXAMPLES.glob("*.c")) + sorted(TENSOR_EXAMPLES.glob("*.c"))
    built += [build_c(source, out, clang) for source in sources]
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "guests")
    parser.add_argument("--require-c", action="store_true", help="fail without clang")
    args = parser.parse_args()
    for path in build_all(args.out, require_c=args.require_c):
        print(path)


if __name__ == "__main__":
    main()
