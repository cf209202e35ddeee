"""The executor's path to the jit cache: a blocking gRPC channel used by guest threads.

`tensorwasm:gpu` host functions run on the guest's worker thread and need a kernel's PTX
before they can load it; they ask the jit cache with `EmitKernel` through this channel
(thread-safe, independent of the server's loop). Kernels come back by value and are kept
in a small per-executor LRU, so a warm executor asks the jit cache once per kernel.
RPC failures are mapped to ABI codes here, once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from cachetools import LRUCache
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext
from tensorwasm.common.v1.service_token import with_service_token
from tensorwasm.jit.v1 import jit_service_pb2 as pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import channel_options, open_blocking_channel
from tensorwasm_common.errors import Code
from tensorwasm_common.gpu_abi import AbiError, AbiFailure
from tensorwasm_common.status import error_from_rpc
from tensorwasm_common.tls import ClientTls

_DTYPES = {"f32": pb.DATA_TYPE_F32, "f16": pb.DATA_TYPE_F16}
_UNREACHABLE = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.UNKNOWN})


@dataclass(frozen=True)
class JitKernel:
    """An emitted kernel as the executor loads it: PTX bytes and entry name."""

    ptx: bytes
    entry: str


KernelKey = tuple[str, tuple[tuple[str, int], ...], str, str]


class JitClient:
    """A blocking channel to the jit cache with a small LRU of the kernels it returned."""

    def __init__(
        self,
        address: str,
        *,
        target: str,
        cache_entries: int = 256,
        service_token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """Opens the channel (connecting lazily).

        Args:
            address: The jit cache's `host:port`.
            target: The GPU target kernels are emitted for (e.g. "sm_80").
            cache_entries: How many kernels this executor keeps.
            service_token: The fleet's service token, sent on every call.
            tls: TLS (and the client certificate) of the channel; None: plaintext.

        Raises:
            ValueError: `cache_entries` is less than 1.
        """
        if cache_entries < 1:
            raise ValueError(f"cache_entries must be >= 1, got {cache_entries}")
        self.target = target
        self._channel = open_blocking_channel(address, tls, channel_options())
        tracing = client_interceptor()  # type: ignore[no-untyped-call]
        traced = grpcext.intercept_channel(  # type: ignore[no-untyped-call]
            with_service_token(self._channel, service_token), tracing
        )
        self._stub = pb_grpc.JitCacheServiceStub(traced)
        self._cache: LRUCache[KernelKey, JitKernel] = LRUCache(maxsize=cache_entries)
        self._lock = threading.Lock()

    def kernel(
        self, op: str, params: Mapping[str, int], dtype: str, timeout_seconds: float
    ) -> JitKernel:
        """The PTX and entry of an op, from this executor's LRU or the jit cache.

        Raises:
            AbiFailure: INVALID_ARGS (the jit cache refused the op, dtype or parameters;
                its message says why), NOT_AVAILABLE (unreachable or out of time),
                INTERNAL (any other refusal).
        """
        key: KernelKey = (op, tuple(sorted(params.items())), dtype, self.target)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                return found
        if dtype not in _DTYPES:
            raise AbiFailure(AbiError.INVALID_ARGS, f"unknown dtype {dtype!r} (f32 or f16)")
        request = pb.EmitKernelRequest(
            op=op, params=dict(params), dtype=_DTYPES[dtype], target=self.target
        )
        try:
            response = self._stub.EmitKernel(request, timeout=max(timeout_seconds, 0.001))
        except grpc.RpcError as exc:
            raise _abi_failure(exc) from None
        kernel = JitKernel(response.kernel.ptx.encode("utf-8"), response.kernel.entry)
        with self._lock:
            self._cache[key] = kernel
        return kernel

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()


def _abi_failure(exc: grpc.RpcError) -> AbiFailure:
    error = error_from_rpc(exc)
    if error.code == Code.INVALID_ARGUMENT:
        return AbiFailure(AbiError.INVALID_ARGS, f"jit: {error.message}")
    if error.code in _UNREACHABLE:
        return AbiFailure(AbiError.NOT_AVAILABLE, f"the jit cache is unavailable: {error.message}")
    return AbiFailure(AbiError.INTERNAL, f"the jit cache refused the request ({error.reason})")
