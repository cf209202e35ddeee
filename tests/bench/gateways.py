"""Stacks for benchmark groups: a `LocalStack` in a temporary directory (`started_stack`),
and a gateway process of its own beside one (its executor and store), for groups that
compare gateways configured differently in front of the same back end."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tensorwasm_client.stack import LocalStack, ServiceProcess

# A stack whose tenants are never throttled: a group's own calls in a row are its workload.
UNTHROTTLED_ENV: Mapping[str, str] = {
    "OTEL_TRACES_EXPORTER": "none",
    "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "1000000",
    "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": "1000000",
}


def started_stack(
    cleanup: contextlib.ExitStack, env: Mapping[str, str] = UNTHROTTLED_ENV
) -> tuple[Path, str]:
    """A `LocalStack` on ephemeral ports in a temporary directory, with `env`, stopped
    (and the directory removed) by `cleanup`: (the directory, the gateway's address)."""
    data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
    stack = LocalStack(data_dir / "stack", ephemeral_ports=True, extra_env=dict(env))
    cleanup.callback(stack.stop)
    return data_dir, stack.start()["gateway"].grpc_address


@contextlib.contextmanager
def extra_gateway(
    stack: LocalStack,
    services: Mapping[str, ServiceProcess],
    name: str,
    database_url: str,
    *,
    env: Mapping[str, str] | None = None,
    start_timeout_seconds: float = 60.0,
    stop_timeout_seconds: float = 60.0,
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """Starts `python -m tensorwasm_gateway` on `database_url`, in front of the stack's
    executor and store, with `env` on top; yields the process and its ready record once it
    serves (its log is `<stack>/logs/<name>.log`), and stops it on exit.

    Raises:
        RuntimeError: it exited or did not write its ready file in time.
    """
    ready = stack.data_dir / "run" / f"{name}.ready.json"
    process_env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_GATEWAY_METRICS_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_GATEWAY_HTTP_ADDRESS": "",
        "TENSORWASM_GATEWAY_READY_FILE": str(ready),
        "TENSORWASM_GATEWAY_DATABASE_URL": database_url,
        "TENSORWASM_GATEWAY_SERVICE_TOKEN_FILE": str(stack.service_token_path),
        "TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": services["executor"].grpc_address,
        "TENSORWASM_GATEWAY_SNAPSHOT_ADDRESS": services["snapshot"].grpc_address,
        **(env or {}),
    }
    with (stack.data_dir / "logs" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorwasm_gateway"],
            env=process_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout_seconds
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway {name} did not start (see its log)")
            time.sleep(0.05)
        yield process, json.loads(ready.read_text())
    finally:
        process.terminate()
        process.wait(stop_timeout_seconds)
