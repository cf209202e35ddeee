"""The real `tensorwasm` command against a real stack.

By default the stack runs on ephemeral ports (so a developer's stack on 50051-50055 is left
alone) and the CLI is pointed at it with `--gateway`. With TENSORWASM_E2E_FIXED_PORTS=1 the
stack is started and stopped by `tensorwasm up` / `tensorwasm down` on the fixed ports.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tensorwasm_client.stack import DEFAULT_PORTS, SERVICES, LocalStack

pytestmark = pytest.mark.integration

TENSORWASM = Path(sys.executable).parent / "tensorwasm"
FIXED_PORTS = os.environ.get("TENSORWASM_E2E_FIXED_PORTS") == "1"
_TENANTS = itertools.count(1)


def cli_env() -> dict[str, str]:
    """The environment without settings that would redirect the CLI elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("TENSORWASM_GATEWAY", "TENSORWASM_TENANT", "TENSORWASM_DATA_DIR")
    }


def tensorwasm(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TENSORWASM), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=100,
        env=cli_env(),
        check=False,
    )


def ports_in_use() -> list[int]:
    busy = []
    for port in DEFAULT_PORTS.values():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@dataclass
class Cli:
    """Runs the CLI against one stack as one tenant."""

    data_dir: Path
    gateway: str | None
    tenant: str | None = None

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        options = ["--gateway", self.gateway] if self.gateway else []
        if self.tenant:
            options += ["--tenant", self.tenant]
        return tensorwasm(*options, *args, data_dir=self.data_dir)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def fails(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith("error: "), result.stderr
        return result.stderr


@pytest.fixture(scope="module")
def stack_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    data_dir = tmp_path_factory.mktemp("cli-stack")
    assert TENSORWASM.is_file(), f"{TENSORWASM} is missing: run make setup"
    if FIXED_PORTS:
        busy = ports_in_use()
        if busy:
            pytest.skip(f"TENSORWASM_E2E_FIXED_PORTS=1 but ports {busy} are in use")
        up = tensorwasm("up", data_dir=data_dir)
        try:
            assert up.returncode == 0, up.stderr
            assert [line.split()[0] for line in up.stdout.splitlines()[:5]] == list(SERVICES)
            yield Cli(data_dir, gateway=None)
        finally:
            down = tensorwasm("down", data_dir=data_dir)
            assert down.returncode == 0, down.stderr
        return
    launcher = LocalStack(data_dir, ephemeral_ports=True)
    services = launcher.start()
    try:
        yield Cli(data_dir, gateway=services["gateway"].grpc_address)
    finally:
        launcher.stop()


@pytest.fixture
def cli(stack_cli: Cli) -> Cli:
    """The CLI as a tenant of its own."""
    return Cli(stack_cli.data_dir, stack_cli.gateway, tenant=f"cli-{next(_TENANTS)}")


def test_deploy_invoke_list_get_delete(cli: Cli, wat_dir: Path) -> None:
    deployed = json.loads(cli.ok("deploy", str(wat_dir / "add.wat")))
    assert deployed["name"] == "functions/add"
    assert deployed["exports"] == {"add": "(i32, i32) -> (i32)"}
    assert len(deployed["module_digest"]) == 64

    assert cli.ok("invoke", "add", "--export", "add", "--args", "[1,2]") == "[3]\n"
    assert cli.ok("invoke", "add", "--args", "[2147483647, 1]") == "[-2147483648]\n"

    listing = cli.ok("list").splitlines()
    assert len(listing) == 1
    assert listing[0].split()[0] == "functions/add"
    assert listing[0].endswith("[add]")

    got = json.loads(cli.ok("get", "add"))
    assert got["name"] == "functions/add"
    assert got["tenant"] == cli.tenant
    assert got["module_digest"] == deployed["module_digest"]
    assert got["module_size_bytes"] > 8

    assert cli.ok("delete", "add") == "deleted add\n"
    assert cli.ok("list") == ""
    assert cli.fails("invoke", "add", "--args", "[1,2]").startswith(
        "error: NOT_FOUND FUNCTION_NOT_FOUND"
    )


def test_deploy_a_binary_module_under_a_chosen_name(
    cli: Cli, tmp_path: Path, wat_dir: Path
) -> None:
    import wasmtime

    module = tmp_path / "Add Two.wasm"
    module.write_bytes(bytes(wasmtime.wat2wasm((wat_dir / "add.wat").read_text())))
    assert json.loads(cli.ok("deploy", str(module)))["name"] == "functions/add-two"
    assert json.loads(cli.ok("deploy", str(module), "--name", "plus"))["name"] == "functions/plus"
    assert cli.ok("invoke", "plus", "--args", "[40, 2]") == "[42]\n"


def test_wasi_hello_prints_its_stdout(cli: Cli, wat_dir: Path) -> None:
    cli.ok("deploy", str(wat_dir / "hello.wat"))
    result = cli("invoke", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello, world\n[]\n"
    assert result.stderr == ""


def test_stdin_file_and_stderr(cli: Cli, wat_dir: Path, tmp_path: Path) -> None:
    cli.ok("deploy", str(wat_dir / "wasi_echo.wat"), "--name", "echo")
    stdin = tmp_path / "input.txt"
    stdin.write_text("line one\nline two\n")
    result = cli("invoke", "echo", "--export", "_start", "--stdin", str(stdin))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello stdout\nline one\nline two\n[]\n"
    assert result.stderr == "hello stderr\n"


def test_typed_arguments_and_results(cli: Cli, wat_dir: Path) -> None:
    cli.ok("deploy", str(wat_dir / "numeric.wat"))
    assert cli.ok("invoke", "numeric", "--export", "add_f32", "--args", "[1.5, 2.25]") == "[3.75]\n"
    assert (
        cli.ok("invoke", "numeric", "--export", "id_f32", "--args", '[{"bits": "0x7fa00000"}]')
        == '[{"bits": "0x7fa00000"}]\n'  # a NaN payload prints as its exact bits
    )
    assert cli.ok("invoke", "numeric", "--export", "id_f32", "--args", '["nan"]') == '["nan"]\n'

    assert cli.ok("invoke", "numeric", "--export", "id_f64", "--args", '["-inf"]') == '["-inf"]\n'
    assert (
        cli.ok("invoke", "numeric", "--export", "add_i64", "--args", "[9223372036854775807, 1]")
        == "[-9223372036854775808]\n"
    )
    assert cli.ok("invoke", "numeric", "--export", "swap", "--args", "[1, 2]") == "[2, 1]\n"


def test_guest_failures_set_the_exit_code(cli: Cli, wat_dir: Path) -> None:
    cli.ok("deploy", str(wat_dir / "traps.wat"))
    assert "error: guest failed: TRAP" in cli.fails("invoke", "traps", "--export", "boom")
    deadline = cli.fails("invoke", "traps", "--export", "spin", "--timeout", "0.3")
    assert "error: guest failed: DEADLINE_EXCEEDED" in deadline

    cli.ok("deploy", str(wat_dir / "wasi_echo.wat"), "--name", "echo")
    result = cli("invoke", "echo", "--export", "exit3")
    assert result.returncode == 3
    assert "error: guest failed: PROC_EXIT" in result.stderr


def test_errors_exit_1_with_a_message(cli: Cli, wat_dir: Path, tmp_path: Path) -> None:
    cli.ok("deploy", str(wat_dir / "add.wat"))
    assert cli.fails("deploy", str(wat_dir / "add.wat")).startswith(
        "error: ALREADY_EXISTS FUNCTION_ALREADY_EXISTS"
    )
    garbage = tmp_path / "garbage.wasm"
    garbage.write_bytes(b"definitely not wasm")
    assert cli.fails("deploy", str(garbage)).startswith("error: INVALID_ARGUMENT INVALID_WASM")
    assert "error:" in cli.fails("deploy", str(tmp_path / "missing.wasm"))
    assert cli.fails("invoke", "add", "--args", "[1]") == "error: expected 2 arguments, got 1\n"
    assert "error:" in cli.fails("invoke", "add", "--args", '{"a": 1}')
    assert "error:" in cli.fails("invoke", "add", "--args", "[1, 2.5]")
    assert "error:" in cli.fails("invoke", "add", "--export", "nope")
    assert cli.fails("get", "Bad_Name").startswith("error: INVALID_ARGUMENT INVALID_NAME")


def test_stream_writes_output_as_the_guest_runs(cli: Cli, wat_dir: Path, tmp_path: Path) -> None:
    cli.ok("deploy", str(wat_dir / "wasi_echo.wat"), "--name", "echo")
    stdin = tmp_path / "input.txt"
    stdin.write_text("line one\nline two\n")
    result = cli("invoke", "echo", "--export", "_start", "--stdin", str(stdin), "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello stdout\nline one\nline two\n[]\n"
    assert result.stderr == "hello stderr\n"

    cli.ok("deploy", str(wat_dir / "stream.wat"))
    assert cli.ok("invoke", "stream", "--export", "lines", "--stream") == (
        "out 1\nout 2\nout 3\n[42]\n"
    )
    trapped = cli("invoke", "stream", "--export", "trap_after_output", "--stream")
    assert trapped.returncode == 1
    assert trapped.stdout == "before the trap\n"
    assert "error: guest failed: TRAP" in trapped.stderr
    exited = cli("invoke", "echo", "--export", "exit3", "--stream")
    assert exited.returncode == 3
    assert "error: guest failed: PROC_EXIT" in exited.stderr
    assert cli.fails("invoke", "nope", "--stream").startswith("error: NOT_FOUND")

    # The line arrives while the guest still spins (until its 3 s deadline): streamed,
    # not printed at the end.
    options = ["--gateway", cli.gateway] if cli.gateway else []
    options += ["--tenant", cli.tenant] if cli.tenant else []
    args = ["invoke", "stream", "--export", "spin_after_line", "--timeout", "3", "--stream"]
    with subprocess.Popen(
        [str(TENSORWASM), "--data-dir", str(cli.data_dir), *options, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"started\n"
        assert process.poll() is None, "the output came only after the call ended"
        assert process.wait(timeout=60) == 1
        assert b"error: guest failed: DEADLINE_EXCEEDED" in process.stderr.read()
        assert process.stdout.read() == b""


def test_an_unreachable_gateway_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    result = Cli(tmp_path, gateway=address)("list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE")


def test_a_malformed_wat_file_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "broken.wat"
    source.write_text("(module (func")
    result = Cli(tmp_path, gateway="127.0.0.1:1")("deploy", str(source))
    assert result.returncode == 1
    assert result.stderr.startswith("error: "), result.stderr


def start_detached(data_dir: Path) -> LocalStack:
    """Starts a stack from a short-lived launcher process, as `tensorwasm up` does.

    The services are then nobody's children here, so `tensorwasm down` can stop them
    without leaving this process with unreaped child processes.
    """
    code = (
        "import sys, pathlib\n"
        "from tensorwasm_client.stack import LocalStack\n"
        "LocalStack(pathlib.Path(sys.argv[1]), ephemeral_ports=True).start()\n"
    )
    started = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    return LocalStack(data_dir)


@pytest.mark.skipif(FIXED_PORTS, reason="the fixed-port run checks up/down in its fixture")
def test_status_and_down(tmp_path: Path) -> None:
    launcher = start_detached(tmp_path)
    try:
        services = launcher.services()
        status = tensorwasm("status", data_dir=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = [line.split() for line in status.stdout.splitlines()]
        assert [row[:4] for row in rows] == [
            [n, "SERVING", "grpc", services[n].grpc_address] for n in SERVICES
        ]
        for row, name in zip(rows, SERVICES, strict=True):
            assert f"http://{services[name].metrics_address}/metrics" in row
            assert services[name].log_path in row
        assert services["gateway"].http_address in rows[-1]

        launcher.kill("jit")
        status = tensorwasm("status", data_dir=tmp_path)
        assert status.returncode == 1
        assert [row.split()[1] for row in status.stdout.splitlines()] == [
            "SERVING",
            "EXITED",
            "SERVING",
            "SERVING",
            "SERVING",
            "one",  # restart one service with: tensorwasm restart SERVICE
        ]

        down = tensorwasm("down", data_dir=tmp_path)
        assert down.returncode == 0, down.stderr
        assert down.stdout == "stopped: gateway, executor, dispatcher, snapshot\n"
        assert not launcher.running()

        status = tensorwasm("status", data_dir=tmp_path)
        assert status.returncode == 1
        assert status.stdout.startswith("no stack recorded")
        assert tensorwasm("down", data_dir=tmp_path).stdout == "stopped: nothing was running\n"
    finally:
        launcher.stop()


def test_instance_create_call_delete(cli: Cli, wat_dir: Path) -> None:
    cli.ok("deploy", str(wat_dir / "counter.wat"))
    created = cli("instance", "create", "counter")
    assert created.returncode == 0, created.stderr
    first, second = created.stdout.splitlines()
    name = json.loads(first)["name"]  # the name first, on a line of its own
    assert second == "started"  # then the start function's stdout
    got = json.loads(cli.ok("instance", "get", name))
    assert (got["name"], got["function"], got["tenant"]) == (name, "functions/counter", cli.tenant)
    listed = cli.ok("instance", "list").splitlines()
    assert [line.split()[:2] for line in listed] == [[name, "functions/counter"]]
    assert cli.ok("instance", "call", name, "--export", "inc") == "[1]\n"
    assert cli.ok("instance", "call", name, "--export", "add", "--args", "[5]") == "[6]\n"
    assert cli.ok("instance", "delete", name) == f"deleted {name}\n"
    assert cli.ok("instance", "list") == ""
    assert cli.fails("instance", "call", name, "--export", "inc").startswith(
        "error: NOT_FOUND INSTANCE_NOT_FOUND"
    )


def test_deploy_with_a_wasi_config(cli: Cli, wat_dir: Path) -> None:
    cli.ok(
        "deploy", str(wat_dir / "wasi_probe.wat"), "--argv", "probe", "--argv=-v",
        "--env", "MODE=test",
    )  # fmt: skip
    # argv[0] is the function's name; --argv entries follow it
    assert cli.ok("invoke", "wasi-probe", "--export", "args").startswith("wasi-probe\0probe\0-v\0")
    assert cli.ok("invoke", "wasi-probe", "--export", "environ").startswith("MODE=test\0")
    assert "INVALID_WASI_CONFIG" in cli.fails(
        "deploy", str(wat_dir / "wasi_probe.wat"), "--name", "bad", "--dir", "../up"
    )


def test_run_locally_without_the_services(wat_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("local file\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return tensorwasm("run", *args, data_dir=tmp_path / "unused")

    added = run(str(wat_dir / "add.wat"), "--args", "[40, 2]")
    assert (added.returncode, added.stdout) == (0, "[42]\n")
    probed = run(str(wat_dir / "wasi_probe.wat"), "--export", "args", "--", "x", "--y")
    assert probed.stdout.startswith("wasi_probe.wat\0x\0--y\0")
    cat = run(str(wat_dir / "wasi_probe.wat"), "--export", "cat", "--dir", str(tmp_path))
    assert cat.stdout == "local file\n[0]\n"
    spun = run(str(wat_dir / "counter.wat"), "--export", "spin", "--timeout", "0.2")
    assert spun.returncode == 1 and "DEADLINE_EXCEEDED" in spun.stderr
    missing = run(str(wat_dir / "counter.wat"), "--export", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    assert not (tmp_path / "unused").exists()  # no stack was started


def test_async_invoke_then_invocation_get_and_list(cli: Cli, wat_dir: Path) -> None:
    cli.ok("deploy", str(wat_dir / "add.wat"))
    started = json.loads(cli.ok("invoke", "add", "--args", "[40, 2]", "--async"))
    name = started["name"]
    assert name.startswith("invocations/"), name

    waited = cli("invocation", "get", name, "--wait", "--wait-timeout", "60")
    assert waited.returncode == 0, waited.stderr
    document, results = waited.stdout.splitlines()
    assert json.loads(document) == {
        "name": name,
        "function": "functions/add",
        "export": "add",
        "state": "succeeded",
        "results": [42],
    }
    assert results == "[42]"

    assert json.loads(cli.ok("invocation", "get", name))["state"] == "succeeded"
    (line,) = cli.ok("invocation", "list").splitlines()
    assert line.split() == [name, "succeeded", "functions/add", "add"]


def test_argv0_is_the_function_name_and_argv_follows(cli: Cli, wat_dir: Path) -> None:
    probe = str(wat_dir / "wasi_probe.wat")
    cli.ok("deploy", probe, "--name", "probe")
    assert cli.ok("invoke", "probe", "--export", "args") == "probe\0[]\n"  # argc 1, as a shell
    cli.ok("deploy", probe, "--name", "flags", "--argv", "x", "--argv", "--y")
    assert cli.ok("invoke", "flags", "--export", "args") == "flags\0x\0--y\0[]\n"


def test_a_directory_outside_the_grant_is_refused_at_deploy(cli: Cli, wat_dir: Path) -> None:
    probe = str(wat_dir / "wasi_probe.wat")
    refused = cli.fails("deploy", probe, "--name", "reader", "--dir", "assets")
    assert "DIRECTORY_NOT_GRANTED" in refused
    assert "<TENSORWASM_EXECUTOR_GUEST_DIRS_ROOT>/" in refused
    grant = cli.data_dir / "guest-dirs" / str(cli.tenant) / "assets"
    assert f"on this local stack: mkdir -p {grant}" in refused
    assert cli.ok("list") == ""  # nothing was deployed
    grant.mkdir(parents=True)
    (grant / "hello.txt").write_text("granted\n")
    cli.ok("deploy", probe, "--name", "reader", "--dir", "assets")
    assert cli.ok("invoke", "reader", "--export", "cat").startswith("granted\n")


def test_deploy_replace(cli: Cli, wat_dir: Path) -> None:
    cli.ok("deploy", str(wat_dir / "add.wat"), "--name", "fn")
    assert "ALREADY_EXISTS" in cli.fails("deploy", str(wat_dir / "hello.wat"), "--name", "fn")
    cli.ok("deploy", str(wat_dir / "hello.wat"), "--name", "fn", "--replace")
    assert cli.ok("invoke", "fn") == "hello, world\n[]\n"
    cli.ok("deploy", str(wat_dir / "add.wat"), "--name", "new", "--replace")  # none to replace
