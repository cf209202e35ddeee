"""tools/install_uv.py: uv from its wheel, without pip (PEP 668), and `make`'s use of it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools"))
import install_uv  # noqa: E402


def test_wheel_platform_and_pick() -> None:
    assert install_uv.wheel_platform("x86_64", "glibc") == "manylinux_2_17_x86_64"
    assert install_uv.wheel_platform("aarch64", "musl") == "musllinux_1_1_aarch64"
    with pytest.raises(install_uv.InstallError, match="no uv wheel for machine"):
        install_uv.wheel_platform("sparc", "glibc")
    files: list[dict[str, object]] = [
        {"filename": "uv-0.13.9.tar.gz"},
        {"filename": "uv-0.13.8-py3-none-manylinux_2_17_x86_64.whl"},
        {"filename": "uv-0.13.9-py3-none-manylinux_2_17_aarch64.whl"},
        {"filename": "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"},
    ]
    picked = install_uv.pick_wheel(files, "0.13.9", "manylinux_2_17_x86_64")
    assert picked is files[3]
    with pytest.raises(install_uv.InstallError, match=r"no uv 0\.13\.9 wheel for musllinux"):
        install_uv.pick_wheel(files, "0.13.9", "musllinux_1_1_x86_64")


def test_the_binary_comes_out_of_the_wheel_executable(tmp_path: Path) -> None:
    wheel = tmp_path / "uv-9.9.9-py3-none-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("uv-9.9.9.data/scripts/uv", "#!/bin/sh\necho uv 9.9.9\n")
        archive.writestr("uv/__init__.py", "")
    assert install_uv.main(["--dest", str(tmp_path / "tools"), "--wheel", str(wheel)]) == 0
    binary = tmp_path / "tools" / "bin" / "uv"
    assert os.access(binary, os.X_OK)
    assert (
        subprocess.run([binary], capture_output=True, text=True, check=False).stdout == "uv 9.9.9\n"
    )


def test_make_installs_uv_without_pip_when_none_is_found(tmp_path: Path) -> None:
    """With no uv on PATH nor in ~/.local/bin, `make setup` plans tools/install_uv.py into
    .tools/uv, never `pip install` (refused by a PEP 668 system Python)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if any(Path(d, "uv").exists() for d in ("/usr/bin", "/bin")):
        pytest.fail("a uv in /usr/bin or /bin: this test needs a machine without one there")
    planned = subprocess.run(
        ["make", "-n", "--no-print-directory", "-B", "uv", "UV_LOCAL=/nonexistent/uv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert planned.returncode == 0, planned.stderr
    assert "tools/install_uv.py --dest .tools/uv" in planned.stdout
    assert "pip" not in planned.stdout
