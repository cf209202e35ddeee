"""Which access class each RPC of the public API belongs to, and whether it is audited.

Every method the guard admits is listed here by its full name; a unit test holds the
table to the GatewayService descriptor, so an RPC added to the proto without an entry
fails the build rather than being guessed at. A method with no entry is treated as an
`admin` call (audited): unknown operations are refused to ordinary tokens.

Classes: `invoke` runs guest code (counted per tenant), `write` changes state, `read`
changes nothing, `admin` is a fleet operation that needs a token with `role=admin`.
Each class has its own concurrency cap (TENSORWASM_GATEWAY_MAX_CONCURRENT_<CLASS>).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

CallClass = Literal["invoke", "write", "read", "admin"]
CALL_CLASSES: tuple[CallClass, ...] = ("invoke", "write", "read", "admin")
GATEWAY_SERVICE = "tensorwasm.gateway.v1.GatewayService"

# Each RPC of GatewayService: its class, and whether each call writes an audit record.
# (No RPC of the public API is a fleet operation today, so none is `admin`.)
GATEWAY_RPCS: Mapping[str, tuple[CallClass, bool]] = {
    "CreateFunction": ("write", True),
    "UploadFunction": ("write", True),
    "GetFunction": ("read", False),
    "ListFunctions": ("read", False),
    "DeleteFunction": ("write", True),
    "Invoke": ("invoke", True),
    "InvokeStream": ("invoke", True),
    "CreateInstance": ("write", True),
    "GetInstance": ("read", False),
    "ListInstances": ("read", False),
    "CallInstance": ("invoke", True),
    "DeleteInstance": ("write", True),
    "SnapshotInstance": ("write", True),
    "RestoreInstance": ("write", True),
    "ExportSnapshot": ("read", False),
    "ImportSnapshot": ("write", True),
    "StartInvocation": ("invoke", True),
    "GetInvocation": ("read", False),
    "ListInvocations": ("read", False),
    "PublishKernel": ("write", True),
    "GetKernel": ("read", False),
    "ListKernels": ("read", False),
}


@dataclass(frozen=True)
class MethodPolicy:
    """How one method is guarded."""

    method: str
    action: str
    call_class: CallClass
    audited: bool
    invoking: bool


def _action(method: str) -> str:
    """The audit action of a full method name: `/pkg.Service/CallInstance` -> `call_instance`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method.rpartition("/")[2]).lower()


class MethodPolicies:
    """The policy of every guarded method, from a table of full method names."""

    def __init__(self, table: Mapping[str, tuple[CallClass, bool]]) -> None:
        unknown = {c for c, _ in table.values()} - set(CALL_CLASSES)
        if unknown:
            raise ValueError(f"unknown call classes {sorted(unknown)}")
        self._policies = {
            method: MethodPolicy(
                method, _action(method), call_class, audited, call_class == "invoke"
            )
            for method, (call_class, audited) in table.items()
        }

    @classmethod
    def for_service(
        cls, service: str, rpcs: Mapping[str, tuple[CallClass, bool]]
    ) -> MethodPolicies:
        """The policies of one service's RPCs (`service` is `package.Service`)."""
        return cls({f"/{service}/{rpc}": entry for rpc, entry in rpcs.items()})

    @property
    def methods(self) -> frozenset[str]:
        """The full names of the methods listed."""
        return frozenset(self._policies)

    def of(self, method: str) -> MethodPolicy:
        """The policy of a full method name (`/package.Service/Rpc`); unlisted: admin."""
        policy = self._policies.get(method)
        if policy is None:
            return MethodPolicy(method, _action(method), "admin", audited=True, invoking=False)
        return policy


GATEWAY_POLICIES = MethodPolicies.for_service(GATEWAY_SERVICE, GATEWAY_RPCS)


def policy_of(method: str) -> MethodPolicy:
    """The policy of one of the gateway's methods (see `GATEWAY_RPCS`)."""
    return GATEWAY_POLICIES.of(method)
