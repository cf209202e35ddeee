"""Installs uv into `.tools/uv/bin/uv` from its PyPI wheel, with the standard library only.

`make setup` runs it (with the machine's own `python3`) when no `uv` is on PATH. It never
touches the system Python: no pip, no venv, nothing under `~` — so it works on a Debian or
Ubuntu whose Python is "externally managed" (PEP 668), where `pip install --user uv` is
refused. The wheel is checked against the sha256 PyPI publishes for it, and only the `uv`
binary is taken out of it.

    python3 tools/install_uv.py [--dest .tools/uv] [--version X.Y.Z] [--wheel FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

UV_VERSION = "0.13.9"
# PyPI's simple index (PEP 691 JSON); a mirror that speaks it can stand in.
INDEX = os.environ.get("TENSORWASM_UV_INDEX", "https://pypi.org/simple")
# platform.machine() -> the wheel's architecture tag.
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class InstallError(RuntimeError):
    """uv could not be installed; the message says why."""


def wheel_platform(machine: str, libc: str) -> str:
    """The wheel platform fragment for this machine, e.g. `manylinux_2_17_x86_64`."""
    arch = _ARCHES.get(machine.lower())
    if arch is None:
        raise InstallError(f"no uv wheel for machine {machine!r}: install uv yourself")
    return f"musllinux_1_1_{arch}" if libc == "musl" else f"manylinux_2_17_{arch}"


def pick_wheel(files: list[dict[str, object]], version: str, fragment: str) -> dict[str, object]:
    """The wheel of `version` among the index's files whose platform tag names `fragment`."""
    for entry in files:
        name = str(entry.get("filename", ""))
        if name.startswith(f"uv-{version}-") and name.endswith(".whl") and fragment in name:
            return entry
    raise InstallError(f"the index has no uv {version} wheel for {fragment}")


def extract_uv(wheel: Path, dest: Path) -> Path:
    """Copies the `uv` binary out of the wheel into `dest/bin/uv` (mode 0755)."""
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith(".data/scripts/uv")]
        if len(members) != 1:
            raise InstallError(f"{wheel.name} holds no single .data/scripts/uv")
        target = dest / "bin" / "uv"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(archive.read(members[0]))
        partial.chmod(0o755)
        partial.replace(target)
        return target


def _https(url: str) -> str:
    if not url.startswith("https://"):
        raise InstallError(f"refusing a non-https URL: {url}")
    return url


def _download(version: str, workdir: Path) -> Path:
    fragment = wheel_platform(platform.machine(), platform.libc_ver()[0] or "musl")
    request = urllib.request.Request(  # noqa: S310 (https only, checked)
        _https(f"{INDEX}/uv/"), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (https only)
        project = json.load(response)
    entry = pick_wheel(list(project["files"]), version, fragment)
    url = str(entry["url"])
    expected = dict(entry["hashes"])["sha256"]  # type: ignore[call-overload]
    wheel = workdir / str(entry["filename"])
    with urllib.request.urlopen(_https(url), timeout=300) as response:  # noqa: S310
        wheel.write_bytes(response.read())
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if actual != expected:
        raise InstallError(f"{wheel.name}: sha256 {actual}, PyPI says {expected}")
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dest", type=Path, default=Path(".tools/uv"))
    parser.add_argument("--version", default=UV_VERSION)
    parser.add_argument("--wheel", type=Path, help="use this wheel instead of downloading")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            wheel = args.wheel or _download(args.version, Path(workdir))
            target = extract_uv(wheel, args.dest)
    except (InstallError, OSError, ValueError, KeyError) as exc:
        print(f"install_uv: {exc}", file=sys.stderr)
        return 1
    print(f"install_uv: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
