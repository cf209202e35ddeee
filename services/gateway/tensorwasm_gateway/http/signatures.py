"""Export signatures read by GetFunction, cached per caller to type JSON arguments."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable

from cachetools import TTLCache
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb

from tensorwasm_gateway.http.documents import ParamTypes


@dataclasses.dataclass(frozen=True)
class Signatures:
    """A function's export signatures as read by GetFunction."""

    module_digest: str
    params: ParamTypes


# (hash of the caller's credentials, tenant header, function id)
SignatureKey = tuple[str, str, str]


def signature_key(authorization: str, tenant: str, function_id: str) -> SignatureKey:
    """The cache key of a caller's view of a function (credentials hashed, not kept)."""
    return hashlib.sha256(authorization.encode()).hexdigest(), tenant, function_id


class SignatureCache:
    """Signatures for `ttl_seconds` (0: nothing is kept), at most MAX_ENTRIES of them
    (least recently used first out).

    An entry is only a guess used to type arguments: the call itself is authorised by
    the gateway as always, and the executor checks every argument's type.
    """

    MAX_ENTRIES = 4096

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._entries: TTLCache[SignatureKey, Signatures] | None = (
            TTLCache(self.MAX_ENTRIES, ttl_seconds, timer=clock) if ttl_seconds > 0 else None
        )

    def get(self, key: SignatureKey) -> Signatures | None:
        """The live entry for `key`, if any."""
        return self._entries.get(key) if self._entries is not None else None

    def put(self, key: SignatureKey, function: pb.Function) -> Signatures:
        """The signatures of `function`, kept for the TTL."""
        signatures = Signatures(
            function.module_digest, {e.name: tuple(e.signature.params) for e in function.exports}
        )
        if self._entries is not None:
            self._entries[key] = signatures
        return signatures

    def forget(self, key: SignatureKey) -> None:
        """Drops the entry for `key`."""
        if self._entries is not None:
            self._entries.pop(key, None)
