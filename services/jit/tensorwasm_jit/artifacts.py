"""Compiled modules (cubins) per (PTX digest, compute capability), shared by dispatchers."""

from __future__ import annotations

import re

import blake3
from tensorwasm_common.errors import InvalidDigestError, TooLargeError

from tensorwasm_jit.byte_store import ByteStore
from tensorwasm_jit.errors import ArtifactNotFoundError, InvalidArgumentError

_DIGEST = re.compile(r"[0-9a-f]{64}")
_CAPABILITY = re.compile(r"sm_[0-9]{2,3}[a-z]?")


class ArtifactCache:
    """Stores and serves verified artifacts in a bounded `ByteStore`."""

    def __init__(self, store: ByteStore, *, max_artifact_bytes: int) -> None:
        self.store = store
        self.max_artifact_bytes = max_artifact_bytes

    def put(
        self, ptx_digest: str, capability: str, data: bytes, *, replace: bool = False
    ) -> tuple[str, bool]:
        """Stores an artifact (over a stored one with `replace`); returns the BLAKE3 hex of
        its bytes and whether it was stored anew.

        Raises:
            InvalidDigestError, InvalidArgumentError: a malformed key or empty data.
            TooLargeError: more than `max_artifact_bytes`.
        """
        name = _name(ptx_digest, capability)
        if not data:
            raise InvalidArgumentError("data is empty", metadata={"field": "data"})
        if len(data) > self.max_artifact_bytes:
            raise TooLargeError(
                f"the artifact has {len(data)} bytes, more than {self.max_artifact_bytes}",
                metadata={"limit_bytes": str(self.max_artifact_bytes)},
            )
        created = self.store.put(name, data, replace=replace)
        return blake3.blake3(data).hexdigest(), created

    def get(self, ptx_digest: str, capability: str) -> tuple[bytes, str]:
        """The artifact's bytes (verified) and their BLAKE3 hex.

        Raises:
            ArtifactNotFoundError: none is stored.
            ArtifactIntegrityError: the stored bytes were damaged (and are now removed).
        """
        data = self.store.get(_name(ptx_digest, capability))
        if data is None:
            raise ArtifactNotFoundError(
                f"no artifact for PTX {ptx_digest[:16]}… on {capability}",
                metadata={"ptx_digest": ptx_digest, "compute_capability": capability},
            )
        return data, blake3.blake3(data).hexdigest()


def _name(ptx_digest: str, capability: str) -> str:
    if not _DIGEST.fullmatch(ptx_digest):
        raise InvalidDigestError(
            "ptx_digest must be 64 lowercase hex digits", metadata={"field": "ptx_digest"}
        )
    if not _CAPABILITY.fullmatch(capability):
        raise InvalidArgumentError(
            f"compute_capability {capability!r} is not like sm_90",
            metadata={"field": "compute_capability"},
        )
    return f"{ptx_digest}.{capability}"
