"""Live instances: the table of resident instances, their reservations, owners and TTLs."""

from tensorwasm_executor.instances.table import InstanceTable, LiveInstance, Reservation

__all__ = ["InstanceTable", "LiveInstance", "Reservation"]
