"""The dispatcher's errors, each with its status code and catalogue reason."""

from __future__ import annotations

from tensorwasm_common.errors import (
    Code,
    InvalidArgumentError,
    Reason,
    ResourceExhaustedError,
    ServiceError,
)

__all__ = [
    "CudaUnavailableError",
    "DispatcherSaturatedError",
    "InvalidBatchError",
    "TenantBusyError",
    "TenantMismatchError",
]


class DispatcherSaturatedError(ResourceExhaustedError):
    """Every request slot of the dispatcher is taken."""

    reason = Reason.DISPATCHER_SATURATED


class TenantBusyError(ResourceExhaustedError):
    """The tenant has its maximum number of requests in flight."""

    reason = Reason.GPU_TENANT_BUSY


class CudaUnavailableError(ServiceError):
    """CUDA was required but cannot be used; `metadata["detail"]` says why."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.CUDA_UNAVAILABLE


class InvalidBatchError(InvalidArgumentError):
    """The batch itself is malformed (not one of its commands)."""

    reason = Reason.INVALID_GPU_BATCH


class TenantMismatchError(InvalidArgumentError):
    """The request's tenant field and its tenant metadata disagree."""

    reason = Reason.TENANT_MISMATCH
