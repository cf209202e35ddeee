"""docs/GUESTS.md as a reader follows it: its `clang-19` lines build its examples, which
run under `tensorwasm run` and deploy to a stack (the reactor initialised at deploy, a live
instance keeping its count), and the GPU build line is the one `make guests` uses."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.guests import NO_CLANG, TENSORWASM, cli, find_clang, load_builder

from .conftest import RunningStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "GUESTS.md"


def guide_commands(prefix: str) -> list[str]:
    """The guide's shell lines (inside ```sh blocks) that start with `prefix`."""
    lines, inside = [], False
    for line in GUIDE.read_text().splitlines():
        if line.startswith("```"):
            inside = line == "```sh"
            continue
        if inside and line.startswith(prefix):
            lines.append(line)
    return lines


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_clang() is None:
        pytest.fail(NO_CLANG)
    out = tmp_path_factory.mktemp("guide")
    for source in (ROOT / "docs" / "guests").glob("*.c"):
        shutil.copy(source, out)
    for command in guide_commands("clang-19 "):
        if "-o greet.wasm" in command or "-o counter.wasm" in command:
            subprocess.run(shlex.split(command), cwd=out, check=True, timeout=300)
    return out


def test_the_guide_builds_its_two_c_examples(built: Path) -> None:
    assert (built / "greet.wasm").is_file()
    assert (built / "counter.wasm").is_file()


def test_the_command_runs_as_the_guide_says(built: Path, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "hello.txt").write_text("granted bytes\n")
    line = guide_commands("echo hi | .venv/bin/tensorwasm run greet.wasm")[0]
    argv = shlex.split(line.split("|", 1)[1])[1:]  # as in the guide, from the pipe on
    argv = [str(built / "greet.wasm") if a == "greet.wasm" else a for a in argv]
    argv = [str(assets) if a == "./assets" else a for a in argv]
    ran = subprocess.run(
        [str(TENSORWASM), *argv],
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "argv[0]=greet.wasm argc=3",
        "arg 1: a",
        "arg 2: b",
        "MODE=dev",
        "stdin: hi",
        "file: granted bytes",
    ]
    failed = subprocess.run(
        [str(TENSORWASM), "run", str(built / "greet.wasm"), "--env", "MODE=fail"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 3  # proc_exit(3), as the guide says


def test_the_reactor_deploys_initialised_and_lives_on(
    stack: RunningStack, tenant: str, built: Path
) -> None:
    deployed = cli(stack.gateway, tenant, "deploy", str(built / "counter.wasm"))
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["init_export"] == "_initialize"
    fresh = cli(stack.gateway, tenant, "invoke", "counter", "--export", "inc")
    assert fresh.stdout == "[1]\n"
    created = cli(stack.gateway, tenant, "instance", "create", "counter")
    assert created.returncode == 0, created.stderr
    name = json.loads(created.stdout.splitlines()[0])["name"]
    assert cli(stack.gateway, tenant, "instance", "call", name, "--export", "inc").stdout == (
        "[1]\n"
    )
    added = cli(
        stack.gateway, tenant, "instance", "call", name, "--export", "add", "--args", "[41]"
    )
    assert added.stdout == "[42]\n"
    assert cli(stack.gateway, tenant, "instance", "delete", name).returncode == 0


def test_the_gpu_build_line_is_the_one_make_guests_uses(tmp_path: Path) -> None:
    """The guide's GPU line has the builder's flags and builds the example (the built GPU
    examples run through the stack in test_guest_sdk and test_jit_guest_sdk)."""
    if find_clang() is None:
        pytest.fail(NO_CLANG)
    (line,) = [c for c in guide_commands("clang-19 ") if "--embed-dir" in c]
    words = shlex.split(line)
    builder = load_builder()
    assert words[1 : 1 + len(builder.CLANG_FLAGS)] == builder.CLANG_FLAGS
    for name in ("clients", "kernels"):
        os.symlink(ROOT / name, tmp_path / name)
    subprocess.run(words, cwd=tmp_path, check=True, timeout=300)
    assert (tmp_path / "vector_add.wasm").stat().st_size > 0
