"""Worker placement on recorded GPU topologies: MIG instances by policy, MPS shares."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from tensorwasm_common.settings import SettingsError
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_dispatcher.workers.placement import (
    MigInstance,
    Placement,
    Topology,
    detect,
    mps_active,
    parse_smi_list,
)

# `nvidia-smi -L` of an H100 split into one 3g and two 2g... instances, and of a plain GPU.
H100_MIG = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d5ba0d0-8c1e-4a44-9d3a-2b6d0e4d7c11)
  MIG 3g.40gb     Device  0: (UUID: MIG-0a1b2c3d-0000-5000-8000-000000000001)
  MIG 2g.20gb     Device  1: (UUID: MIG-0a1b2c3d-0000-5000-8000-000000000002)
  MIG 1g.10gb     Device  2: (UUID: MIG-0a1b2c3d-0000-5000-8000-000000000003)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-9e0f1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b)
"""
PLAIN = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-2222-3333-4444-555555555555)\n"


def mig() -> Topology:
    gpus, instances = parse_smi_list(H100_MIG)
    return Topology(gpus, instances)


def test_the_listing_gives_gpus_and_their_mig_instances() -> None:
    gpus, instances = parse_smi_list(H100_MIG)
    assert len(gpus) == 2
    assert [(m.gpu, m.index, m.profile) for m in instances] == [
        (0, 0, "3g.40gb"), (0, 1, "2g.20gb"), (0, 2, "1g.10gb"),
    ]  # fmt: skip
    assert instances[2].uuid.endswith("000000000003")
    assert parse_smi_list(PLAIN)[1] == ()


def test_hash_placement_is_stable_and_uses_every_instance() -> None:
    placement = Placement(mig(), policy="hash")
    first = {f"tenant-{i}": placement.instance_for(f"tenant-{i}") for i in range(60)}
    again = Placement(mig(), policy="hash")
    assert all(again.instance_for(t) == m for t, m in first.items())
    assert {m.index for m in first.values() if m is not None} == {0, 1, 2}


def test_spread_placement_fills_the_least_used_instance_and_frees_on_exit() -> None:
    placement = Placement(mig(), policy="spread")
    placed = [placement.instance_for(t) for t in ("a", "b", "c", "d")]
    assert [m.index for m in placed if m] == [0, 1, 2, 0]
    placement.released("b", placed[1])
    assert placement.instance_for("e") == placed[1]


def test_assignments_pin_tenants_and_an_unknown_instance_is_refused() -> None:
    uuid = mig().mig[2].uuid
    placement = Placement(mig(), policy="spread", assignments={"gold": uuid})
    assert placement.instance_for("gold") == mig().mig[2]
    with pytest.raises(SettingsError, match="mig_assignments"):
        Placement(mig(), assignments={"gold": "MIG-not-here"})


def test_the_environment_names_the_instance_and_the_mps_share() -> None:
    topology = Topology(mig().gpus, mig().mig, mps=True)
    placement = Placement(
        topology, percentages={"small": "25"}, default_percentage=50, memory_quota_bytes=2 << 30
    )
    instance = MigInstance(0, 1, "2g.20gb", "MIG-x")
    assert placement.environment("small", instance) == {
        "CUDA_VISIBLE_DEVICES": "MIG-x",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2048M",
    }
    assert placement.environment("other", None)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert Placement(Topology()).environment("t", None) == {}


def test_mps_is_detected_by_its_control_pipe(tmp_path: Path) -> None:
    assert not mps_active({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})
    (tmp_path / "control").touch()
    assert mps_active({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})


def test_detect_reads_nvidia_smi_and_survives_its_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi")

    def listing(*_: Any, **__: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 0, stdout=H100_MIG)

    def failing(*_: Any, **__: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 9, stdout="", stderr="NVML: driver mismatch")

    env = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)}
    assert len(detect(listing, env).mig) == 3
    assert detect(failing, env) == Topology()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mig_placement", "random"),
        ("mig_assignments", "gold"),
        ("mps_tenant_percentages", "small=0"),
        ("mps_tenant_percentages", "small=many"),
        ("mps_thread_percentage", 101),
        ("worker_isolation", "process"),
    ],
)
def test_bad_placement_settings_name_the_setting(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=field):
        DispatcherSettings(**{field: value})  # type: ignore[arg-type]
