"""A large module through the real `tensorwasm` CLI: streamed to the gateway, deployed, run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from tensorwasm_client.stack import LocalStack

from tests.integration.test_uploads import padded

pytestmark = pytest.mark.integration

TENSORWASM = Path(sys.executable).parent / "tensorwasm"
LARGE_MODULE_BYTES = 48 << 20  # over the old 32 MiB cap, under the default 64 MiB


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    launcher = LocalStack(tmp_path_factory.mktemp("uploads"), ephemeral_ports=True)
    services = launcher.start()
    try:
        yield services["gateway"].grpc_address
    finally:
        launcher.stop()


def test_a_48_mib_module_is_deployed_and_invoked_through_the_cli(
    gateway: str, tmp_path: Path, wat_dir: Path
) -> None:
    add = bytes(wasmtime.wat2wasm((wat_dir / "add.wat").read_text()))
    module = padded(add, LARGE_MODULE_BYTES - len(add) - 16)
    path = tmp_path / "big.wasm"
    path.write_bytes(module)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(TENSORWASM), "--gateway", gateway, "--tenant", "large", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=110, check=False)

    deployed = cli("deploy", str(path))
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["name"] == "functions/big"
    got = cli("get", "big")
    assert json.loads(got.stdout)["module_size_bytes"] == len(module) > 48_000_000
    invoked = cli("invoke", "big", "--args", "[40, 2]")
    assert (invoked.returncode, invoked.stdout) == (0, "[42]\n"), invoked.stderr
