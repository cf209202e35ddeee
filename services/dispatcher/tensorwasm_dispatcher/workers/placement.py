"""Where a tenant's worker runs on the GPU: MIG instances and the MPS control daemon.

`detect` reads the device topology once at start: the MIG instances `nvidia-smi -L` lists
and whether an MPS control daemon answers (its pipe directory holds `control`).
`Placement` turns it into each worker's environment, set in the worker before CUDA starts:

- MIG: each tenant's worker sees one MIG instance (`CUDA_VISIBLE_DEVICES=<MIG uuid>`), by
  the `mig_placement` policy: `hash` (a stable hash of the tenant over the instances, so a
  tenant keeps its instance across restarts), `spread` (the instance with the fewest
  workers placed, ties by order), or explicit `TENANT=UUID` assignments first, either way.
- MPS: each worker is an MPS client with an active-thread percentage
  (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`: the tenant's from `mps_tenant_percentages`, else
  the default) and the tenant's device-memory quota pinned
  (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`), which the MPS server enforces on top of the
  worker's own ledger.

Without MIG or MPS, workers get no extra environment (separate contexts on the whole GPU).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tensorwasm_common.settings import SettingsError

__all__ = ["MigInstance", "Placement", "Topology", "detect", "mps_active", "parse_smi_list"]

_GPU_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)]+)\)")
_DEFAULT_MPS_PIPE = "/tmp/nvidia-mps"  # noqa: S108 - the MPS daemon's documented default


@dataclass(frozen=True)
class MigInstance:
    """One MIG instance: its GPU, index on that GPU, profile (e.g. `1g.10gb`) and UUID."""

    gpu: int
    index: int
    profile: str
    uuid: str


@dataclass(frozen=True)
class Topology:
    """The GPUs (by UUID), their MIG instances, and whether MPS is active."""

    gpus: tuple[str, ...] = ()
    mig: tuple[MigInstance, ...] = ()
    mps: bool = False


def parse_smi_list(text: str) -> tuple[tuple[str, ...], tuple[MigInstance, ...]]:
    """The GPU UUIDs and MIG instances of `nvidia-smi -L` output."""
    gpus: list[str] = []
    mig: list[MigInstance] = []
    for line in text.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            gpus.append(gpu[3])
            continue
        instance = _MIG_LINE.match(line)
        if instance and gpus:
            mig.append(MigInstance(len(gpus) - 1, int(instance[2]), instance[1], instance[3]))
    return tuple(gpus), tuple(mig)


def mps_active(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an MPS control daemon's pipe is where CUDA clients would look for it."""
    pipe = Path(environ.get("CUDA_MPS_PIPE_DIRECTORY") or _DEFAULT_MPS_PIPE)
    return (pipe / "control").exists()


def detect(
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    environ: Mapping[str, str] = os.environ,
) -> Topology:
    """The topology of this host's GPUs (empty when `nvidia-smi` is missing or fails)."""
    smi = shutil.which("nvidia-smi")
    gpus: tuple[str, ...] = ()
    mig: tuple[MigInstance, ...] = ()
    if smi is not None:
        try:
            listed = run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            listed = None
        if listed is not None and listed.returncode == 0:
            gpus, mig = parse_smi_list(listed.stdout)
    return Topology(gpus, mig, mps_active(environ))


@dataclass
class Placement:
    """Each worker's environment under a topology and the placement settings."""

    topology: Topology
    policy: str = "hash"
    assignments: Mapping[str, str] = field(default_factory=dict)
    default_percentage: int = 100
    percentages: Mapping[str, str] = field(default_factory=dict)
    memory_quota_bytes: int = 0
    _placed: Counter[str] = field(default_factory=Counter, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        known = {instance.uuid for instance in self.topology.mig}
        for tenant, uuid in self.assignments.items():
            if known and uuid not in known:
                raise SettingsError(
                    f"mig_assignments: {tenant}={uuid}: no such MIG instance on this host"
                )

    def instance_for(self, worker: str) -> MigInstance | None:
        """The MIG instance a worker (a tenant, or the shared worker) runs on."""
        instances = self.topology.mig
        if not instances:
            return None
        assigned = self.assignments.get(worker)
        if assigned is not None:
            return next(instance for instance in instances if instance.uuid == assigned)
        if self.policy == "hash":
            digest = hashlib.sha256(worker.encode("utf-8")).digest()
            return instances[int.from_bytes(digest[:8], "big") % len(instances)]
        with self._lock:
            chosen = min(instances, key=lambda instance: self._placed[instance.uuid])
            self._placed[chosen.uuid] += 1
        return chosen

    def released(self, worker: str, instance: MigInstance | None) -> None:
        """A worker placed by `spread` has ended."""
        if instance is not None and self.policy == "spread" and worker not in self.assignments:
            with self._lock:
                self._placed[instance.uuid] -= 1

    def environment(self, worker: str, instance: MigInstance | None) -> dict[str, str]:
        """The environment variables the worker sets before CUDA starts."""
        env: dict[str, str] = {}
        if instance is not None:
            env["CUDA_VISIBLE_DEVICES"] = instance.uuid
        if self.topology.mps:
            share = self.percentages.get(worker, str(self.default_percentage))
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = share
            if self.memory_quota_bytes:
                megabytes = max(1, self.memory_quota_bytes >> 20)
                env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={megabytes}M"
        return env
