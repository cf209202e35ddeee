"""The executor's path to registered kernels: a blocking channel to the snapshot store used
by guest threads to resolve `kernel_by_name`.

A kernel published in the gateway's registry is a record of the store's kernel tenant
(`tensorwasm_common.kernel_records`); this client finds the tenant's own kernel of a
name@version, else the shared catalogue's, reads it (the store verifies the record, this
client the PTX against the manifest's digest) and keeps it in a small LRU: a published
name@version never changes. RPC failures are mapped to ABI codes here, once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc
from cachetools import LRUCache
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext
from tensorwasm.common.v1.service_token import with_service_token
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import TENANT_METADATA_KEY, channel_options, open_blocking_channel
from tensorwasm_common.errors import Code
from tensorwasm_common.gpu_abi import AbiError, AbiFailure
from tensorwasm_common.kernel_records import (
    KERNEL_FINGERPRINT,
    KERNEL_KIND,
    KERNEL_TENANT,
    KernelPayloadError,
    decode_kernel_payload,
    kernel_record_key,
)
from tensorwasm_common.status import error_from_rpc
from tensorwasm_common.tls import ClientTls

SHARED_NAMESPACE = ""
_UNREACHABLE = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.UNKNOWN})
_METADATA = ((TENANT_METADATA_KEY, KERNEL_TENANT),)


@dataclass(frozen=True)
class RegisteredKernel:
    """A registered kernel as the executor loads it."""

    ptx: bytes
    entry: str
    digest: str  # the manifest's BLAKE3 of the PTX, hex


class KernelRegistryClient:
    """A blocking channel to the snapshot store with an LRU of the kernels it resolved."""

    def __init__(
        self,
        address: str,
        *,
        cache_entries: int = 256,
        max_message_bytes: int = 64 << 20,
        service_token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """Opens the channel (connecting lazily) to the store at `address`."""
        self._channel = open_blocking_channel(address, tls, channel_options(max_message_bytes))
        tracing = client_interceptor()  # type: ignore[no-untyped-call]
        traced = grpcext.intercept_channel(  # type: ignore[no-untyped-call]
            with_service_token(self._channel, service_token), tracing
        )
        self._stub = pb_grpc.SnapshotStoreServiceStub(traced)
        self._cache: LRUCache[tuple[str, str, str], RegisteredKernel] = LRUCache(cache_entries)
        self._lock = threading.Lock()

    def kernel(
        self, tenant: str, name: str, version: str, timeout_seconds: float
    ) -> RegisteredKernel:
        """The tenant's own kernel of name@version, else the shared catalogue's.

        Raises:
            AbiFailure: INVALID_KERNEL (none registered), MALFORMED_PTX (the stored PTX
                does not match its manifest's digest), NOT_AVAILABLE (the store is
                unreachable or out of time), INTERNAL (any other refusal).
        """
        key = (tenant, name, version)
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        timeout = max(timeout_seconds, 0.001)
        for namespace in (tenant, SHARED_NAMESPACE):
            snapshot = self._find(namespace, name, version, timeout)
            if snapshot is not None:
                kernel = self._read(snapshot.id, name, version, timeout)
                with self._lock:
                    self._cache[key] = kernel
                return kernel
        raise AbiFailure(AbiError.INVALID_KERNEL, f"no registered kernel {name}@{version}")

    def _find(self, namespace: str, name: str, version: str, timeout: float) -> pb.Snapshot | None:
        source_digest, variant = kernel_record_key(namespace, name, version)
        request = pb.FindSnapshotRequest(
            kind=KERNEL_KIND,
            source_digest=source_digest,
            variant=variant,
            engine_fingerprint=KERNEL_FINGERPRINT,
        )
        try:
            response = self._stub.FindSnapshot(request, timeout=timeout, metadata=_METADATA)
        except grpc.RpcError as exc:
            if error_from_rpc(exc).code == Code.NOT_FOUND:
                return None
            raise _abi_failure(exc) from None
        snapshot: pb.Snapshot = response.snapshot
        return snapshot

    def _read(self, snapshot_id: str, name: str, version: str, timeout: float) -> RegisteredKernel:
        request = pb.ReadSnapshotRequest(
            id=snapshot_id, expected_engine_fingerprint=KERNEL_FINGERPRINT
        )
        try:
            chunks = [
                message.chunk
                for message in self._stub.ReadSnapshot(request, timeout=timeout, metadata=_METADATA)
            ]
        except grpc.RpcError as exc:
            raise _abi_failure(exc) from None
        try:
            header, ptx = decode_kernel_payload(b"".join(chunks))
        except KernelPayloadError as exc:
            raise AbiFailure(AbiError.MALFORMED_PTX, f"kernel {name}@{version}: {exc}") from None
        return RegisteredKernel(ptx, header.entry, header.digest)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()


def _abi_failure(exc: grpc.RpcError) -> AbiFailure:
    error = error_from_rpc(exc)
    if error.code in _UNREACHABLE:
        return AbiFailure(
            AbiError.NOT_AVAILABLE, f"the snapshot store is unavailable: {error.message}"
        )
    return AbiFailure(AbiError.INTERNAL, f"the snapshot store refused the request ({error.reason})")
