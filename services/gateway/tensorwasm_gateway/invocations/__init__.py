"""Async invocations: started now, run in the background, their outcome kept until expiry."""

from tensorwasm_gateway.invocations.service import InvocationService, invocation_id_from_name
from tensorwasm_gateway.invocations.store import InvocationRecord, InvocationStore

__all__ = ["InvocationRecord", "InvocationService", "InvocationStore", "invocation_id_from_name"]
