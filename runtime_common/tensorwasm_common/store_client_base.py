"""What the snapshot store's clients share: the stub, the call deadline, the tenant."""

from __future__ import annotations

import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

from tensorwasm_common.channels import TENANT_METADATA_KEY

# Streamed payloads go out in chunks of this size (well under the message cap).
CHUNK_BYTES = 1 << 20


class StoreClientBase:
    """A snapshot store stub over `channel`, with a per-call timeout and a default tenant.

    `tenant` (per client, or per call) goes out as `x-tensorwasm-tenant` metadata; without
    one the store uses its default tenant.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_seconds: float = 60.0,
        tenant: str | None = None,
    ) -> None:
        self._stub = pb_grpc.SnapshotStoreServiceStub(channel)
        self._timeout = timeout_seconds
        self._tenant = tenant

    def _metadata(self, tenant: str | None) -> tuple[tuple[str, str], ...]:
        """The call's tenant metadata: `tenant`, else the client's, else none."""
        chosen = tenant or self._tenant
        return ((TENANT_METADATA_KEY, chosen),) if chosen else ()
