"""Two gateway processes on one registry database (per-service scaling): a gateway's
(re)start leaves the invocations another live gateway runs alone, and the invocations of
a gateway killed -9 are failed INVOCATION_INTERRUPTED by the survivor once the dead
one's lease expires, never re-run (the executor's call log names each request id once)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_client.client import GatewayClient

from tests.integration.conftest import RunningStack
from tests.integration.test_invocation_durability import (
    MODULE,
    TENANT,
    received,
    start,
    wait_until,
)

pytestmark = pytest.mark.integration
LEASE = {
    "TENSORWASM_GATEWAY_LEASE_HEARTBEAT_SECONDS": "0.2",
    "TENSORWASM_GATEWAY_LEASE_SECONDS": "3",
}
# A running guest's deadline: longer than two cold gateway starts on a loaded machine.
GUEST_DEADLINE_SECONDS = 30


class SecondGateway:
    """Gateway B: its own process, the stack's database, executor and store."""

    def __init__(
        self, stack: RunningStack, name: str, extra_env: dict[str, str] | None = None
    ) -> None:
        self._stack = stack
        self._extra_env = extra_env or {}
        self._ready = stack.data_dir / "run" / f"{name}.ready.json"
        self._log = stack.data_dir / "logs" / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        services = self._stack.services
        env = {
            **os.environ,
            **LEASE,
            "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_METRICS_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_HTTP_ADDRESS": "",
            "TENSORWASM_GATEWAY_READY_FILE": str(self._ready),
            "TENSORWASM_GATEWAY_DATABASE_PATH": str(
                self._stack.data_dir / "gateway" / "registry.sqlite3"
            ),
            "TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": services["executor"].grpc_address,
            "TENSORWASM_GATEWAY_SNAPSHOT_ADDRESS": services["snapshot"].grpc_address,
            "PYTHONUNBUFFERED": "1",
            **self._extra_env,
        }
        self._ready.unlink(missing_ok=True)
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tensorwasm_gateway"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not self._ready.exists():
            assert self.process.poll() is None, self._log.read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway B did not start"
            time.sleep(0.05)
        self.address = json.loads(self._ready.read_text())["grpc_address"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        self.process = None


@pytest.fixture
def pair(launch_stack: object, tmp_path: Path) -> Iterator[tuple[RunningStack, SecondGateway]]:
    stack = launch_stack(tmp_path / "stack", LEASE)  # type: ignore[operator]
    second = SecondGateway(stack, "gateway-b")
    second.start()
    try:
        yield stack, second
    finally:
        with contextlib.suppress(Exception):
            second.stop(signal.SIGKILL)


def every_lease_renewed(stack: RunningStack, times: int) -> bool:
    """True when each gateway holding a lease has renewed it at least `times` times (a
    killed gateway's lease is gone: swept once it expired)."""
    path = stack.data_dir / "gateway" / "registry.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        renewals = [int(row[0]) for row in db.execute("SELECT renewals FROM gateways")]
    return bool(renewals) and min(renewals) >= times


def state_name(client: GatewayClient, name: str) -> str:
    return str(pb.InvocationState.Name(client.get_invocation(name).state))


@pytest.mark.timeout(GUEST_DEADLINE_SECONDS + 240)  # conditions are bounded, not timed
def test_a_running_invocation_survives_another_gateways_restart(
    pair: tuple[RunningStack, SecondGateway],
) -> None:
    stack, second = pair
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
    request_id = f"spin-{uuid.uuid4().hex}"
    # On gateway A; it ends at its deadline, which outlasts B's two cold starts and the
    # heartbeats below even on a loaded machine (the check through B must see it RUNNING).
    invocation = start(stack, "spin", [], request_id, GUEST_DEADLINE_SECONDS)
    with stack.client(TENANT) as client:
        wait_until(lambda: state_name(client, invocation.name) == "INVOCATION_STATE_RUNNING")
    wait_until(lambda: len(received(stack, request_id)) == 1)

    second.stop(signal.SIGKILL)  # B dies and comes back, twice: it never touches A's call
    second.start()
    second.stop()
    second.start()
    # B's heartbeats (each renews, then sweeps) have run for longer than a lease (3 s)
    beats_per_lease = math.ceil(
        float(LEASE["TENSORWASM_GATEWAY_LEASE_SECONDS"])
        / float(LEASE["TENSORWASM_GATEWAY_LEASE_HEARTBEAT_SECONDS"])
    )
    wait_until(lambda: every_lease_renewed(stack, beats_per_lease + 2), 60)
    with GatewayClient(second.address, tenant=TENANT) as via_b:
        assert state_name(via_b, invocation.name) == "INVOCATION_STATE_RUNNING", (
            f"ended before B's restarts were done (deadline {GUEST_DEADLINE_SECONDS} s)"
        )
        done = via_b.wait_invocation(invocation.name, GUEST_DEADLINE_SECONDS + 90)
    # it ended as the guest's own failure (its deadline), on gateway A, not interrupted
    assert pb.InvocationState.Name(done.state) == "INVOCATION_STATE_FAILED"
    assert not done.HasField("error"), done.error
    assert done.outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert len(received(stack, request_id)) == 1


def test_a_killed_gateways_invocation_is_failed_by_the_survivor_after_its_lease(
    pair: tuple[RunningStack, SecondGateway],
) -> None:
    stack, second = pair
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
    request_id = f"spin-{uuid.uuid4().hex}"
    invocation = start(stack, "spin", [], request_id, 30)
    with stack.client(TENANT) as client:
        wait_until(lambda: state_name(client, invocation.name) == "INVOCATION_STATE_RUNNING")
    wait_until(lambda: len(received(stack, request_id)) == 1)

    stack.launcher.kill("gateway")  # kill -9 of A; B alone serves the database
    killed_at = time.monotonic()
    with GatewayClient(second.address, tenant=TENANT) as via_b:
        assert state_name(via_b, invocation.name) == "INVOCATION_STATE_RUNNING"
        wait_until(lambda: state_name(via_b, invocation.name) == "INVOCATION_STATE_FAILED", 20)
        waited = time.monotonic() - killed_at
        after = via_b.get_invocation(invocation.name)
    assert after.error.reason == "INVOCATION_INTERRUPTED"
    assert after.error.code == grpc.StatusCode.ABORTED.value[0]
    assert waited > 1.0  # not at once: A's lease (3 s, last renewed < 0.5 s before) ran out
    time.sleep(1.0)
    assert len(received(stack, request_id)) == 1  # never re-run
