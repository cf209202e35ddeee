"""Live instances: created on one executor, called there until deleted or idle too long;
their snapshots (`snapshots`): taken, restored on any replica, recovered from checkpoints."""

from tensorwasm_gateway.functions.registry import InstanceRecord
from tensorwasm_gateway.instances.service import (
    InstanceService,
    InstanceSpec,
    instance_id_from_name,
)
from tensorwasm_gateway.instances.snapshots import InstanceSnapshotService, SnapshotInfo

__all__ = [
    "InstanceRecord",
    "InstanceService",
    "InstanceSnapshotService",
    "InstanceSpec",
    "SnapshotInfo",
    "instance_id_from_name",
]
