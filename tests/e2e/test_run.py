"""`tensorwasm run` as a process: Ctrl-C stops a guest spinning in native code."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

TENSORWASM = Path(sys.executable).parent / "tensorwasm"


@pytest.mark.timeout(180)
def test_ctrl_c_stops_a_spinning_guest(wat_dir: Path) -> None:
    guest = subprocess.Popen(
        [str(TENSORWASM), "run", str(wat_dir / "loud_spin.wat"), "--export", "spin_loudly"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert guest.stdout is not None
        # the guest says so before it spins: from here on it is in its loop
        assert guest.stdout.readline() == b"spinning\n"
        guest.send_signal(signal.SIGINT)
        _, stderr = guest.communicate(timeout=120)
    finally:
        guest.kill()
        guest.wait()
    assert guest.returncode == 130
    assert stderr.decode().endswith("error: interrupted\n")
