"""Releasing the fleet's compiled artifacts of a module once no function uses it, and a
tenant's pre-initialised instance images of a module once none of its functions does.

Executors share each module's compiled artifact through the snapshot store (records of the
`fleet-artifacts` tenant, one per engine fingerprint), so only the gateway, which holds the
registry, knows when one is no longer needed: after the last function of a module is
deleted, its records go (and with them their blob references). A deploy of the same module
racing the delete costs at most a compile on the replicas that lack the artifact.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from tensorwasm_common.errors import ServiceError

from tensorwasm_gateway.functions.registry import Registry

__all__ = ["ArtifactRecords", "release_unused_artifacts", "release_unused_images"]

_log = logging.getLogger(__name__)


class ArtifactRecords(Protocol):
    """What is needed of `tensorwasm_common.snapshot_client.SnapshotClient`."""

    async def delete_compiled_artifacts(self, source_digest: str) -> int:
        """Deletes the fleet's compiled artifacts of the module; -> how many."""

    async def delete_instance_images(self, tenant: str, source_digest: str) -> int:
        """Deletes the tenant's pre-initialised images of the module; -> how many."""


async def release_unused_artifacts(
    registry: Registry, records: ArtifactRecords, module_digest: str
) -> int:
    """Deletes the module's compiled artifacts unless a function (of any tenant) still uses
    it; -> how many were deleted. A store failure is logged, not raised: the function is
    gone either way, and the records are released by the next delete of that module."""
    if await asyncio.to_thread(registry.uses_module, module_digest):
        return 0
    try:
        deleted = await records.delete_compiled_artifacts(module_digest)
    except ServiceError as exc:
        _log.warning("could not release the artifacts of %s: %s", module_digest[:12], exc)
        return 0
    if deleted:
        _log.info("released compiled artifacts", extra={"digest": module_digest, "count": deleted})
    return deleted


async def release_unused_images(
    registry: Registry, records: ArtifactRecords, tenant: str, module_digest: str
) -> int:
    """Deletes the tenant's pre-initialised instance images of the module unless another of
    its functions still runs it (images are per tenant: init ran with the tenant's grants);
    -> how many were deleted. A store failure is logged, not raised, as for artifacts."""
    if await asyncio.to_thread(registry.tenant_uses_module, tenant, module_digest):
        return 0
    try:
        deleted = await records.delete_instance_images(tenant, module_digest)
    except ServiceError as exc:
        _log.warning("could not release the images of %s: %s", module_digest[:12], exc)
        return 0
    if deleted:
        _log.info(
            "released instance images",
            extra={"digest": module_digest, "tenant": tenant, "count": deleted},
        )
    return deleted
