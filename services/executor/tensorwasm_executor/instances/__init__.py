"""Live instances: the table of resident instances, their reservations, owners and TTLs;
their state between calls (`state`) and its snapshots in the store (`snapshots`)."""

from tensorwasm_executor.instances.table import InstanceTable, LiveInstance, Reservation

__all__ = ["InstanceTable", "LiveInstance", "Reservation"]
