"""WASI configuration from the wire: validation and the read-only directory grant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.errors import Code, InvalidWasiConfigError
from tensorwasm_executor.errors import DirectoryNotGrantedError
from tensorwasm_executor.wasi import wasi_from_wire
from tensorwasm_executor.wasm.sandbox import NO_WASI_OPTIONS


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "acme" / "models" / "v1").mkdir(parents=True)
    (tmp_path / "globex" / "secret").mkdir(parents=True)
    return tmp_path


def test_empty_config_is_no_wasi() -> None:
    config = invocation_pb2.WasiConfig()
    assert wasi_from_wire(config, tenant="acme", guest_dirs_root=None) is NO_WASI_OPTIONS


def test_argv_and_env_pass_through_sorted() -> None:
    config = invocation_pb2.WasiConfig(argv=["p", "x"], env={"B": "2", "A": "1"})
    options = wasi_from_wire(config, tenant="acme", guest_dirs_root=None)
    assert options.argv == ("p", "x")
    assert options.env == (("A", "1"), ("B", "2"))
    assert options.read_only_dir is None


def test_granted_directory_resolves_under_the_tenant(root: Path) -> None:
    config = invocation_pb2.WasiConfig(read_only_dir="models/v1", guest_dir="/models")
    options = wasi_from_wire(config, tenant="acme", guest_dirs_root=root)
    assert options.read_only_dir == str((root / "acme" / "models" / "v1").resolve())
    assert options.guest_dir == "/models"
    default = wasi_from_wire(
        invocation_pb2.WasiConfig(read_only_dir="models"), tenant="acme", guest_dirs_root=root
    )
    assert default.guest_dir == "/data"


@pytest.mark.parametrize("relative", ["../globex/secret", "/etc", "models/../../globex"])
def test_paths_that_climb_out_are_malformed(root: Path, relative: str) -> None:
    config = invocation_pb2.WasiConfig(read_only_dir=relative)
    with pytest.raises(InvalidWasiConfigError):
        wasi_from_wire(config, tenant="acme", guest_dirs_root=root)


@pytest.mark.parametrize("relative", ["missing", "models/v1/nope", "nope/deeper"])
def test_directories_outside_the_grant_are_refused(root: Path, relative: str) -> None:
    config = invocation_pb2.WasiConfig(read_only_dir=relative)
    with pytest.raises(DirectoryNotGrantedError) as caught:
        wasi_from_wire(config, tenant="acme", guest_dirs_root=root)
    assert (caught.value.code, caught.value.reason) == (
        Code.INVALID_ARGUMENT,
        "DIRECTORY_NOT_GRANTED",
    )


def test_a_symlink_out_of_the_subtree_is_refused(root: Path) -> None:
    os.symlink(root / "globex" / "secret", root / "acme" / "link")
    config = invocation_pb2.WasiConfig(read_only_dir="link")
    with pytest.raises(DirectoryNotGrantedError):
        wasi_from_wire(config, tenant="acme", guest_dirs_root=root)


def test_no_root_grants_nothing() -> None:
    config = invocation_pb2.WasiConfig(read_only_dir="models")
    with pytest.raises(DirectoryNotGrantedError, match="grants no directories"):
        wasi_from_wire(config, tenant="acme", guest_dirs_root=None)


def test_a_tenant_id_that_is_a_path_is_refused(root: Path) -> None:
    config = invocation_pb2.WasiConfig(read_only_dir="secret")
    with pytest.raises(DirectoryNotGrantedError):
        wasi_from_wire(config, tenant="../globex", guest_dirs_root=root)


@pytest.mark.parametrize(
    "config",
    [
        invocation_pb2.WasiConfig(argv=["a\0b"]),
        invocation_pb2.WasiConfig(env={"": "x"}),
        invocation_pb2.WasiConfig(env={"A=B": "x"}),
        invocation_pb2.WasiConfig(env={"A": "\0"}),
        invocation_pb2.WasiConfig(argv=["x"] * 1025),
        invocation_pb2.WasiConfig(argv=["x" * 40000, "y" * 30000]),
    ],
    ids=["nul-argv", "empty-name", "eq-name", "nul-value", "too-many", "too-big"],
)
def test_malformed_configs_are_refused(config: invocation_pb2.WasiConfig) -> None:
    with pytest.raises(InvalidWasiConfigError) as caught:
        wasi_from_wire(config, tenant="acme", guest_dirs_root=None)
    assert caught.value.reason == "INVALID_WASI_CONFIG"


def test_guest_dir_must_be_absolute(root: Path) -> None:
    config = invocation_pb2.WasiConfig(read_only_dir="models", guest_dir="rel")
    with pytest.raises(InvalidWasiConfigError):
        wasi_from_wire(config, tenant="acme", guest_dirs_root=root)
