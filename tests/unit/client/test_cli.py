"""The `tensorwasm` command tree (tensorwasm_client.cli), in-process, without services:
its commands, global options and environment, exit codes, and `run ... -- guest argv`."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_json import ArgumentError
from tensorwasm_client.cli import app, local_stack, quick_parse
from tensorwasm_client.cli import run as run_command
from tensorwasm_client.cli.common import exit_code, print_outcome
from tensorwasm_client.cli.entry import hoist_global_options, main
from tensorwasm_client.client import TensorWasmError
from tensorwasm_client.local_run import DEFAULT_RUN_TIMEOUT_SECONDS
from tensorwasm_client.stack import StackAddresses
from typer.testing import CliRunner, Result

COMMANDS = {
    "up",
    "down",
    "status",
    "restart",
    "deploy",
    "list",
    "get",
    "delete",
    "invoke",
    "run",
    "invocation",
    "instance",
    "snapshot",
    "bench",
    "metrics",
    "observe",
    "completions",
    "kernel",
}
VERBS = {
    "invocation": {"get", "list"},
    "instance": {"create", "list", "get", "call", "delete"},
    "snapshot": {"ls", "get", "rm", "verify", "save", "restore"},
    "kernel": {"publish", "list", "get", "verify"},
}
ENV_VARS = ("TENSORWASM_GATEWAY", "TENSORWASM_TENANT", "TENSORWASM_TOKEN", "TENSORWASM_DATA_DIR")


@pytest.fixture(autouse=True)
def _no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV_VARS, "TENSORWASM_STORE"):
        monkeypatch.delenv(name, raising=False)


def tensorwasm(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env, prog_name="tensorwasm")


def test_each_command_is_registered_once() -> None:
    group = typer.main.get_group(app)
    assert set(group.commands) == COMMANDS
    for name, verbs in VERBS.items():
        assert set(group.commands[name].commands) == verbs  # type: ignore[attr-defined]


def test_help_lists_the_commands_the_environment_and_shell_completion() -> None:
    result = tensorwasm("--help")
    assert result.exit_code == 0, result.output
    for command in COMMANDS:
        assert f"\n  {command} " in result.stdout
    for variable in ENV_VARS:
        assert variable in result.stdout
    assert "--install-completion" in result.stdout
    assert "--show-completion" in result.stdout
    assert tensorwasm("-h").stdout == result.stdout
    assert tensorwasm("run", "-h").stdout.startswith("Usage: tensorwasm run [OPTIONS]")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("no-such-command",),
        ("--no-such-option", "list"),
        ("get",),
        ("instance",),
        ("list", "--", "guest-argument"),
        ("invoke", "add", "--fuel", "lots"),
        ("snapshot", "ls", "--kind", "no-such-kind"),
        ("deploy", "add.wat", "--init-export", "setup", "--no-init"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = tensorwasm(*args)
    assert result.exit_code == 2, result.output
    assert "Usage: tensorwasm" in result.output


def test_data_dir_from_the_option_the_environment_else_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tensorwasm("--data-dir", str(tmp_path / "flag"), "status")
    assert (flag.exit_code, flag.stdout) == (1, f"no stack recorded in {tmp_path / 'flag'}\n")

    env = tensorwasm("status", env={"TENSORWASM_DATA_DIR": str(tmp_path / "env")})
    assert env.stdout == f"no stack recorded in {tmp_path / 'env'}\n"

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    default = tensorwasm("status", env={"TENSORWASM_DATA_DIR": ""})
    assert default.stdout == f"no stack recorded in {tmp_path / 'xdg' / 'tensorwasm'}\n"
    assert not (tmp_path / "xdg").exists()


def test_run_passes_the_arguments_after_the_double_dash_to_the_guest(wat_dir: Path) -> None:
    added = tensorwasm("run", str(wat_dir / "add.wat"), "--args", "[40, 2]")
    assert (added.exit_code, added.stdout) == (0, "[42]\n")

    probe = str(wat_dir / "wasi_probe.wat")
    probed = tensorwasm("run", probe, "--export", "args", "--", "x", "--y", "--export")
    assert probed.exit_code == 0, probed.output
    assert probed.stdout.startswith("wasi_probe.wat\0x\0--y\0--export\0")


def test_refusals_exit_1_with_an_error_line(wat_dir: Path, tmp_path: Path) -> None:
    missing = tensorwasm("run", str(tmp_path / "missing.wasm"))
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: ")

    bad_env = tensorwasm("run", str(wat_dir / "add.wat"), "--env", "NO_EQUALS_SIGN")
    assert bad_env.exit_code == 1
    assert bad_env.stderr == "error: --env takes NAME=value, got 'NO_EQUALS_SIGN'\n"

    not_an_array = tensorwasm("run", str(wat_dir / "add.wat"), "--args", '{"a": 1}')
    assert not_an_array.exit_code == 1
    assert not_an_array.stderr == "error: --args must be a JSON array\n"


def test_a_command_exits_with_the_code_it_returns(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(lambda: 0)() is None
    with pytest.raises(typer.Exit) as exited:
        exit_code(lambda: 3)()
    assert exited.value.exit_code == 3

    def refused() -> int:
        raise TensorWasmError("NOT_FOUND", "FUNCTION_NOT_FOUND", "no function add")

    with pytest.raises(typer.Exit) as exited:
        exit_code(refused)()
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err.startswith("error: NOT_FOUND FUNCTION_NOT_FOUND")

    def interrupted() -> int:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as exited:
        exit_code(interrupted)()
    assert exited.value.exit_code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


@pytest.mark.parametrize(
    ("argv", "hoisted"),
    [
        (["up", "--data-dir", "D"], ["--data-dir", "D", "up"]),
        (["status", "--data-dir=D", "--tenant", "t"], ["--data-dir=D", "--tenant", "t", "status"]),
        (
            ["run", "m.wasm", "--gateway", "g", "--", "--tenant", "x"],
            ["--gateway", "g", "run", "m.wasm", "--", "--tenant", "x"],
        ),
        (["--token", "k", "list"], ["--token", "k", "list"]),
    ],
)
def test_global_options_are_accepted_after_the_command(argv: list[str], hoisted: list[str]) -> None:
    assert hoist_global_options(argv) == hoisted


def test_up_with_the_data_dir_after_the_command_reaches_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[Path, object]] = []

    class RecordingStack:
        start_warnings = [("gateway", "NO BEARER TOKENS CONFIGURED: dev mode")]

        def __init__(self, data_dir: Path, addresses: object = None, **_options: object) -> None:
            seen.append((data_dir, addresses))

        def start(self) -> dict[str, object]:
            return {}

    monkeypatch.setattr(local_stack, "LocalStack", RecordingStack)
    monkeypatch.setattr(
        sys, "argv", ["tensorwasm", "up", "--port-base", "41000", "--data-dir", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    assert seen[0][0] == tmp_path
    assert seen[0][1] == StackAddresses(port_base=41000)
    assert "warning: gateway: NO BEARER TOKENS CONFIGURED" in capsys.readouterr().err


def test_the_makefile_targets_call_the_cli_as_it_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dirs: list[Path] = []

    class RecordingStack:
        """Stands in for LocalStack: records the data dir, starts and stops nothing."""

        start_warnings: list[tuple[str, str]] = []

        def __init__(self, data_dir: Path, **_options: object) -> None:
            data_dirs.append(data_dir)

        def start(self) -> dict[str, object]:
            return {}

        def stop(self) -> list[str]:
            return []

        def services(self) -> dict[str, object]:
            return {}

    monkeypatch.setattr(local_stack, "LocalStack", RecordingStack)
    makefile = Path(__file__).resolve().parents[3] / "Makefile"
    prefix = ".venv/bin/tensorwasm "
    recipes = [
        line.strip().removeprefix(prefix).replace("$(DATA_DIR)", str(tmp_path))
        for line in makefile.read_text().splitlines()
        if line.strip().startswith(prefix)
    ]
    assert len(recipes) == 3, recipes
    for recipe in recipes:
        result = tensorwasm(*shlex.split(recipe))
        assert result.exit_code in (0, 1), (recipe, result.output)
    assert data_dirs == [tmp_path] * 3


def test_a_bad_args_is_named_not_a_parser_trace(wat_dir: Path) -> None:
    bad = tensorwasm("run", str(wat_dir / "add.wat"), "--args", "[1,")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: --args is not JSON (Expecting value at character 3)")
    assert "--args '[1, 2.5" in bad.stderr


def test_run_prints_results_only_for_exports_that_return_values(wat_dir: Path) -> None:
    hello = tensorwasm("run", str(wat_dir / "hello.wat"))
    assert (hello.exit_code, hello.stdout) == (0, "hello, world\n")  # no [] after _start
    added = tensorwasm("run", str(wat_dir / "add.wat"), "--args", "[1, 2]")
    assert added.stdout == "[3]\n"


def test_run_reads_piped_stdin_and_dash(wat_dir: Path) -> None:
    echo = str(wat_dir / "wasi_echo.wat")
    piped = CliRunner().invoke(app, ["run", echo], input="from the pipe\n")
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == "hello stdout\nfrom the pipe\n"
    dash = CliRunner().invoke(app, ["run", echo, "--stdin", "-"], input="dash\n")
    assert dash.stdout == "hello stdout\ndash\n"


def test_run_says_when_output_was_cut(wat_dir: Path) -> None:
    cut = tensorwasm("run", str(wat_dir / "hello.wat"), "--max-output", "5")
    assert cut.exit_code == 0
    assert cut.stdout == "hello"
    assert "warning: the guest's stdout was cut at 5 bytes (--max-output)" in cut.stderr


def test_run_has_a_default_deadline(wat_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def spy(*args: object, timeout_seconds: float, **kwargs: object) -> object:
        seen.append(timeout_seconds)
        raise ArgumentError("stop here")

    monkeypatch.setattr(run_command, "run_local", spy)
    tensorwasm("run", str(wat_dir / "add.wat"))
    tensorwasm("run", str(wat_dir / "add.wat"), "--timeout", "0")
    assert seen == [DEFAULT_RUN_TIMEOUT_SECONDS, 0.0]
    assert DEFAULT_RUN_TIMEOUT_SECONDS == 300.0


def test_run_refuses_unknown_imports_in_one_line(tmp_path: Path, wat_dir: Path) -> None:
    unknown = tensorwasm("run", str(wat_dir / "bad_import.wat"))
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("error: ")
    assert "imports env.host_fn, which tensorwasm run does not provide" in unknown.stderr
    assert "Traceback" not in unknown.output
    # A GPU module's function that does not exist is refused the same way.
    gpu = tmp_path / "gpu.wat"
    gpu.write_text(
        '(module (import "wasi:cuda/host@0.2.0" "device-count" (func (result i32)))'
        ' (func (export "_start")))'
    )
    refused = tensorwasm("run", str(gpu))
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1
    assert "imports wasi:cuda/host@0.2.0.device-count, which tensorwasm run" in refused.stderr


def test_run_runs_a_gpu_guest_in_process_on_the_cpu_backend(
    tmp_path: Path, cuda_guest: Callable[[str], bytes]
) -> None:
    guest = tmp_path / "vector_add.wasm"
    guest.write_bytes(cuda_guest("cuda_vector_add"))
    # c = a + b by one launch of the canonical vector_add PTX, checked by the guest (0: ok).
    once = tensorwasm("run", str(guest), "--export", "run")
    assert (once.exit_code, once.stdout.strip()) == (0, "[0]"), once.output
    # Ten launches in place, one sync: each reads the previous one's output.
    many = tensorwasm("run", str(guest), "--export", "accumulate", "--args", "[10]")
    assert (many.exit_code, many.stdout.strip()) == (0, "[0]"), many.output


@pytest.mark.parametrize(
    "argv",
    [
        ["add.wat", "--args", "[1, 2]"],
        ["add.wat", "--env", "A=1", "--env", "B=2", "--timeout", "2.5", "--fuel", "7"],
        ["probe.wat", "--export", "args", "--", "x", "--y", "--export"],
        ["probe.wat", "--dir", "/tmp", "--guest-dir", "/in", "--max-output", "9", "--", "a"],
    ],
)
def test_runs_fast_path_parses_as_typer_does(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tensorwasm run` parsed by quick_parse (the console script's fast path) reaches
    run_local with exactly what the typer command passes."""
    calls: list[dict[str, object]] = []
    quick_parse.parse(run_command.run, argv)  # the fast path covers these (no fallback)

    def spy(path: Path, **kwargs: object) -> object:
        kwargs.pop("on_output")
        calls.append({"path": path, **kwargs})
        raise ArgumentError("stop here")

    monkeypatch.setattr(run_command, "run_local", spy)
    tensorwasm("run", *argv)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))  # as CliRunner's
    assert run_command.run_main(argv) == 1
    assert len(calls) == 2
    assert calls[0] == calls[1]


def test_runs_fast_path_leaves_help_and_errors_to_typer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_command.run_main(["add.wat", "--bogus"]) == 2
    assert "No such option: --bogus" in capsys.readouterr().err


def test_version() -> None:
    shown = tensorwasm("--version")
    assert shown.exit_code == 0
    assert shown.stdout.startswith("tensorwasm 0.1.0 (wasmtime-py ")


def test_invoke_says_when_output_was_cut(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    outcome = invocation_pb2.InvocationOutcome(
        stdout=b"12345",
        stdout_truncated=True,
        success=invocation_pb2.InvocationSuccess(),
    )
    assert print_outcome(outcome) == 0
    out, err = capsysbinary.readouterr()
    assert out == b"12345[]\n"
    assert b"warning: the guest's stdout was cut at the call's output cap" in err


def test_runs_start_up_path_loads_neither_grpc_nor_pydantic() -> None:
    """What `tensorwasm run` imports before the guest: no gateway client, no command tree,
    no pydantic (typer's adapters): about half of the CLI's start-up (bench run_startup)."""
    code = (
        "import sys\n"
        "from tensorwasm_client.cli import entry, quick_parse, run\n"
        "quick_parse.parse(run.run, ['x.wasm', '--env', 'A=1', '--', 'a'])\n"
        "import tensorwasm_executor.wasm.sandbox, tensorwasm_executor.convert\n"
        "heavy = ('grpc', 'pydantic', 'tensorwasm_client.cli.tree', 'tensorwasm_client.client')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "[]\n"


@pytest.mark.parametrize("ref", ["nover", "a@", "@1.0.0", "a@1@2"])
def test_kernel_refs_must_be_name_at_version(ref: str) -> None:
    result = tensorwasm("kernel", "get", ref)
    assert result.exit_code == 1
    assert "expected NAME@VERSION" in result.stderr


def test_kernel_publish_refuses_a_key_file_that_is_not_64_hex_digits(tmp_path: Path) -> None:
    key, ptx = tmp_path / "k", tmp_path / "k.ptx"
    key.write_text("abc")
    ptx.write_text(".visible .entry k()\n{}\n")
    result = tensorwasm(
        "kernel", "publish", "k", "1.0.0", "--ptx-file", str(ptx), "--sm", "80",
        "--key-file", str(key),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "64 hex digits" in result.stderr
