"""Live instances: created on one executor, called there until deleted or idle too long."""

from tensorwasm_gateway.functions.registry import InstanceRecord
from tensorwasm_gateway.instances.service import (
    InstanceService,
    InstanceSpec,
    instance_id_from_name,
)

__all__ = ["InstanceRecord", "InstanceService", "InstanceSpec", "instance_id_from_name"]
