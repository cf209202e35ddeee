"""A dispatcher as its own process on the cpu backend, for the tests of its gRPC face."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running_dispatcher(work_dir: Path, **settings: str) -> Iterator[str]:
    """Starts `python -m tensorwasm_dispatcher` on ephemeral ports with the cpu backend and
    `settings` (`MAX_IN_FLIGHT="4"` sets TENSORWASM_DISPATCHER_MAX_IN_FLIGHT); yields its
    gRPC address once its ready file is written, and stops it on exit."""
    with dispatcher_process(work_dir, **settings) as (address, _):
        yield address


@contextmanager
def dispatcher_process(
    work_dir: Path, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As `running_dispatcher`, yielding the process too."""
    ready = work_dir / "ready.json"
    env = {
        **os.environ,
        "TENSORWASM_DISPATCHER_LISTEN_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_DISPATCHER_METRICS_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_DISPATCHER_READY_FILE": str(ready),
        "TENSORWASM_DISPATCHER_BACKEND": "cpu",
        **{f"TENSORWASM_DISPATCHER_{name}": value for name, value in settings.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorwasm_dispatcher"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, "the dispatcher exited"
            assert time.monotonic() < deadline, "the dispatcher did not start"
            time.sleep(0.05)
        yield str(json.loads(ready.read_text())["grpc_address"]), process
    finally:
        process.terminate()
        process.wait(timeout=30)
