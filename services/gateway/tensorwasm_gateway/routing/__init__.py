"""Executor replicas: where they are, which one runs a call, and the calls to them."""

from tensorwasm_gateway.routing.executors import (
    ExecutorPool,
    ExecutorStream,
    Replica,
    open_executor_pool,
)
from tensorwasm_gateway.routing.rendezvous import ReplicaView, load_bound, rendezvous_order, route
from tensorwasm_gateway.routing.replicas import ReplicaSource, resolve_host

__all__ = [
    "ExecutorPool",
    "ExecutorStream",
    "Replica",
    "ReplicaSource",
    "ReplicaView",
    "load_bound",
    "open_executor_pool",
    "rendezvous_order",
    "resolve_host",
    "route",
]
