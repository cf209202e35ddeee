"""Registered kernels in the snapshot store: the record key of a namespace/name@version and
the record's payload (a one-line JSON header, then the PTX text).

The gateway's kernel registry writes them when a kernel is published (its manifests live in
the gateway's database); executors read them to resolve `kernel_by_name`. All of them are
records of one store tenant, `KERNEL_TENANT`: the namespace ('' for the shared catalogue,
else the owning tenant) is part of each key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import blake3
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb

KERNEL_KIND = pb.SNAPSHOT_KIND_KERNEL
KERNEL_TENANT = "fleet-kernels"
KERNEL_FINGERPRINT = "ptx"
MAX_HEADER_BYTES = 4096
_KEY_DOMAIN = b"tensorwasm-kernel-registry/v1\x00"


class KernelPayloadError(ValueError):
    """A kernel record's payload is not a header line and PTX whose digest matches."""


@dataclass(frozen=True)
class KernelHeader:
    """What a registered kernel's record says about its PTX."""

    name: str
    version: str
    sm_version: int
    entry: str
    digest: str  # BLAKE3 of the PTX text, 64 lowercase hex digits (the manifest's digest)


def kernel_record_key(namespace: str, name: str, version: str) -> tuple[str, str]:
    """The (source_digest, variant) of a registered kernel's record."""
    key = b"\x00".join(part.encode("utf-8") for part in (namespace, name, version))
    return blake3.blake3(_KEY_DOMAIN + key).hexdigest(), f"{namespace}/{name}@{version}"


def encode_kernel_payload(header: KernelHeader, ptx: bytes) -> bytes:
    """The record payload: the header as one JSON line, then the PTX."""
    line = json.dumps(
        {
            "name": header.name,
            "version": header.version,
            "sm_version": header.sm_version,
            "entry": header.entry,
            "digest": header.digest,
        },
        separators=(",", ":"),
    )
    return line.encode("utf-8") + b"\n" + ptx


def decode_kernel_payload(payload: bytes) -> tuple[KernelHeader, bytes]:
    """The header and PTX of a record payload, the PTX checked against the header's digest.

    Raises:
        KernelPayloadError: no header line, a malformed header, or a digest mismatch.
    """
    line, newline, ptx = payload.partition(b"\n")
    if not newline or len(line) > MAX_HEADER_BYTES:
        raise KernelPayloadError("the kernel record has no header line")
    try:
        fields = json.loads(line)
        header = KernelHeader(
            name=str(fields["name"]),
            version=str(fields["version"]),
            sm_version=int(fields["sm_version"]),
            entry=str(fields["entry"]),
            digest=str(fields["digest"]),
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        raise KernelPayloadError("the kernel record's header is malformed") from None
    if blake3.blake3(ptx).hexdigest() != header.digest:
        raise KernelPayloadError("the kernel record's PTX does not match its digest")
    return header, ptx
