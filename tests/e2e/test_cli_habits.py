"""The `tensorwasm` CLI as a person uses it, against a real stack with tokens: a config
file with profiles, `--output json|table`, error lines with a hint, and a large module
streamed to the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from tensorwasm_client.stack import LocalStack

from tests.modules import padded

pytestmark = pytest.mark.integration

TENSORWASM = Path(sys.executable).parent / "tensorwasm"
LARGE_MODULE_BYTES = 48 << 20  # over the old 32 MiB cap, under the default 64 MiB
ACME_TOKEN = "acme-cli-habits-0123456789"
BETA_TOKEN = "beta-cli-habits-0123456789"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    launcher = LocalStack(
        tmp_path_factory.mktemp("habits"),
        ephemeral_ports=True,
        extra_env={
            "TENSORWASM_GATEWAY_TOKENS": f"{ACME_TOKEN}:tenant=acme;{BETA_TOKEN}:tenant=beta"
        },
    )
    services = launcher.start()
    try:
        yield services["gateway"].grpc_address
    finally:
        launcher.stop()


@pytest.fixture
def config_home(tmp_path: Path, gateway: str) -> Path:
    """$XDG_CONFIG_HOME with a config: acme by default, a `beta` profile, tokens in files."""
    home = tmp_path / "config"
    (home / "tensorwasm").mkdir(parents=True)
    (home / "tensorwasm" / "acme.token").write_text(ACME_TOKEN + "\n")
    (home / "tensorwasm" / "beta.token").write_text(BETA_TOKEN + "\n")
    (home / "tensorwasm" / "config.toml").write_text(
        f'gateway = "{gateway}"\n'
        'tenant = "acme"\n'
        'token_file = "acme.token"\n'
        "\n[profiles.beta]\n"
        'tenant = "beta"\n'
        'token_file = "beta.token"\n'
    )
    return home


def run(config_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORWASM_")}
    env["XDG_CONFIG_HOME"] = str(config_home)
    return subprocess.run(
        [str(TENSORWASM), *args], capture_output=True, text=True, timeout=110, env=env, check=False
    )


def ok(config_home: Path, *args: str) -> str:
    result = run(config_home, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(330)  # three CLI runs, each bounded at 110 s, on a loaded machine
def test_a_48_mib_module_is_deployed_and_invoked_through_the_cli(
    config_home: Path, tmp_path: Path, wat_dir: Path
) -> None:
    add = bytes(wasmtime.wat2wasm((wat_dir / "add.wat").read_text()))
    module = padded(add, LARGE_MODULE_BYTES - len(add) - 16)
    path = tmp_path / "big.wasm"
    path.write_bytes(module)
    assert json.loads(ok(config_home, "deploy", str(path)))["name"] == "functions/big"
    got = json.loads(ok(config_home, "get", "big"))
    assert (got["tenant"], got["module_size_bytes"]) == ("acme", len(module))
    assert len(module) > 48_000_000
    assert ok(config_home, "invoke", "big", "--args", "[40, 2]") == "[42]\n"


@pytest.mark.timeout(300)  # eight CLI runs of a second or two each, on a loaded machine
def test_profiles_choose_gateway_tenant_and_token_and_flags_win(
    config_home: Path, wat_dir: Path
) -> None:
    add = str(wat_dir / "add.wat")
    ok(config_home, "deploy", add, "--name", "mine")  # the file's top level: acme
    ok(config_home, "--profile", "beta", "deploy", add, "--name", "theirs")
    acme = json.loads(ok(config_home, "--output", "json", "list"))
    beta = json.loads(ok(config_home, "--profile", "beta", "-o", "json", "list"))
    assert "functions/mine" in [f["name"] for f in acme]
    assert [f["name"] for f in beta] == ["functions/theirs"]
    assert beta[0]["exports"] == ["add"]
    # A flag wins over the profile: the beta token is not scoped to acme.
    denied = run(config_home, "--profile", "beta", "--tenant", "acme", "list")
    assert denied.returncode == 1
    lines = denied.stderr.splitlines()
    assert lines[0].startswith("error: PERMISSION_DENIED TENANT_SCOPE_DENIED"), denied.stderr
    assert lines[1].startswith("hint: the token is not scoped to this tenant")
    missing = run(config_home, "--profile", "nope", "list")
    assert missing.returncode == 2 and "no profile 'nope'" in missing.stderr


def test_table_output_and_an_error_line_with_its_hint(config_home: Path, wat_dir: Path) -> None:
    ok(config_home, "--profile", "beta", "deploy", str(wat_dir / "add.wat"), "--name", "tab")
    table = ok(config_home, "--profile", "beta", "--output", "table", "list").splitlines()
    assert table[0].split() == ["NAME", "MODULE_DIGEST", "MODULE_SIZE_BYTES", "EXPORTS"]
    assert "functions/tab" in [line.split()[0] for line in table[1:]]
    record = ok(config_home, "--profile", "beta", "-o", "table", "get", "tab").splitlines()
    assert record[0].split() == ["name", "functions/tab"]
    assert ["tenant", "beta"] in [line.split() for line in record]
    missing = run(config_home, "get", "absent")
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        missing.stderr.splitlines()[0],
        "hint: `tensorwasm list` shows the tenant's functions (right --tenant?)",
    ]
    assert missing.stderr.startswith("error: NOT_FOUND FUNCTION_NOT_FOUND")
