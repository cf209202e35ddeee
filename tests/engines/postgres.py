"""A real PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp dir on a loopback port.

PostgreSQL refuses to run as root, so as root the server runs as an unprivileged system
user (created once with `useradd --system` when missing) that owns the temp dir. Where the
binaries are missing the tests that need them skip, unless TENSORWASM_REQUIRE_POSTGRES=1
(as in CI, where `make engines-postgres` installs them): then they fail.

Fixtures: `postgres_server` (one per session, shared) and `postgres_url` (a fresh database
on it per test); `PostgresServer` can also be started on its own by a test that stops it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SYSTEM_USER = "tensorwasm-pg"
SUPERUSER = "tensorwasm"
PASSWORD = "tensorwasm-test"
START_TIMEOUT_SECONDS = 120
REQUIRE_ENV = "TENSORWASM_REQUIRE_POSTGRES"


def postgres_bin_dir() -> Path | None:
    """The directory of initdb/pg_ctl/postgres, or None when PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def require_postgres() -> Path:
    """The binaries' directory; skips the test without them (fails under REQUIRE_ENV=1)."""
    found = postgres_bin_dir()
    if found is None:
        message = "PostgreSQL (initdb, pg_ctl) is not installed: run `make engines-postgres`"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to fail instead)")
    return found


class PostgresServer:
    """One server in its own temp dir; `start`, `stop`, `url(database)`."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin = bin_dir
        self._root = Path(tempfile.mkdtemp(prefix="tensorwasm-pg-"))
        self.data_dir = self._root / "data"
        self.log_path = self._root / "server.log"
        self.port = 0
        self._as_user = _unprivileged_user() if os.geteuid() == 0 else None
        if self._as_user is not None:
            os.chown(self._root, self._as_user.pw_uid, self._as_user.pw_gid)
        self._root.chmod(0o700)
        pwfile = self._root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self._run(
            "initdb",
            "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Starts the server (a fresh port the first time, the same one after) and waits
        until it accepts connections (`pg_ctl -w`)."""
        if not self.port:
            self.port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self._root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
            "-w", "-t", str(START_TIMEOUT_SECONDS), "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (`immediate`: as a crash would)."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", check=False)

    def url(self, database: str = "postgres") -> str:
        """The URL of one of its databases."""
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drops a database made by `create_database` (its sessions are ended)."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def remove(self) -> None:
        """Stops the server and deletes its files."""
        self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)

    def _own(self, path: Path) -> None:
        if self._as_user is not None:
            os.chown(path, self._as_user.pw_uid, self._as_user.pw_gid)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        kwargs: dict[str, Any] = {}
        if self._as_user is not None:
            kwargs = {
                "user": self._as_user.pw_uid,
                "group": self._as_user.pw_gid,
                "extra_groups": [],
            }
        env = {**os.environ, "LC_ALL": "C.UTF-8", "HOME": str(self._root)}
        result = subprocess.run(
            [str(self._bin / tool), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self._root,
            timeout=START_TIMEOUT_SECONDS + 30,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}\n{log}"
            )


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, removed afterwards."""
    server = PostgresServer(require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (tests take a database each)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(  # may lose a race with another test run: then the user exists
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SYSTEM_USER],
            check=False, capture_output=True,
        )  # fmt: skip
        return pwd.getpwnam(SYSTEM_USER)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
