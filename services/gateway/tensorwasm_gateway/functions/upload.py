"""A module uploaded in chunks: its declared size and BLAKE3 digest, verified as it arrives.

UploadFunction's stream is a header (function id, config, size, optional digest), the
module's bytes in chunks, then a trailer with the digest when the header had none. The
checks run as the messages come, so a stream that declares too much, or sends more than
it declared, is refused before the rest is read; nothing is stored until `finish`
returned the verified bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3

from tensorwasm_gateway.calls import FunctionConfig
from tensorwasm_gateway.errors import (
    ModuleTooLargeError,
    UploadDigestMismatchError,
    UploadIncompleteError,
    UploadMalformedError,
)

_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class UploadHeader:
    """What an upload deploys, and what its bytes must be."""

    function_id: str
    config: FunctionConfig
    size_bytes: int
    digest: str  # "" when the trailer brings it


class ModuleUpload:
    """Collects one upload's chunks, checking each against the header's promises."""

    def __init__(self, header: UploadHeader, max_module_bytes: int) -> None:
        if header.size_bytes < 0 or header.size_bytes > max_module_bytes:
            raise ModuleTooLargeError(
                f"the upload declares {header.size_bytes} bytes; the limit is {max_module_bytes}",
                metadata={
                    "declared_bytes": str(header.size_bytes),
                    "limit_bytes": str(max_module_bytes),
                },
            )
        if header.digest and not _DIGEST.fullmatch(header.digest):
            raise UploadMalformedError(
                "module_digest must be 64 lowercase hex digits (BLAKE3)",
                metadata={"problem": "digest_format"},
            )
        self.header = header
        self._hasher = blake3.blake3()
        self._buffer = bytearray()
        self._trailer_digest = ""

    @property
    def received_bytes(self) -> int:
        """The bytes received so far."""
        return len(self._buffer)

    def add_chunk(self, chunk: bytes) -> None:
        """The next bytes; refused when they run past the declared size or a trailer."""
        if self._trailer_digest:
            raise UploadMalformedError(
                "module bytes after the trailer", metadata={"problem": "chunk_after_trailer"}
            )
        if self.received_bytes + len(chunk) > self.header.size_bytes:
            raise ModuleTooLargeError(
                f"the upload sends more than the {self.header.size_bytes} bytes it declared",
                metadata={
                    "declared_bytes": str(self.header.size_bytes),
                    "received_bytes": str(self.received_bytes + len(chunk)),
                },
            )
        self._hasher.update(chunk)
        self._buffer += chunk

    def add_trailer(self, digest: str) -> None:
        """The trailer's digest; only once, and only when the header declared none."""
        if self.header.digest or self._trailer_digest:
            raise UploadMalformedError(
                "a trailer after a header that declared the digest, or a second trailer",
                metadata={"problem": "unexpected_trailer"},
            )
        if not _DIGEST.fullmatch(digest):
            raise UploadMalformedError(
                "module_digest must be 64 lowercase hex digits (BLAKE3)",
                metadata={"problem": "digest_format"},
            )
        self._trailer_digest = digest

    def finish(self) -> bytes:
        """The verified module: every declared byte arrived, and its digest is the one
        declared."""
        if self.received_bytes < self.header.size_bytes:
            raise UploadIncompleteError(
                f"the upload ended after {self.received_bytes} of "
                f"{self.header.size_bytes} declared bytes",
                metadata={
                    "declared_bytes": str(self.header.size_bytes),
                    "received_bytes": str(self.received_bytes),
                },
            )
        declared = self.header.digest or self._trailer_digest
        if not declared:
            raise UploadMalformedError(
                "no module_digest in the header nor in a trailer",
                metadata={"problem": "no_digest"},
            )
        actual = self._hasher.hexdigest()
        if actual != declared:
            raise UploadDigestMismatchError(
                "the uploaded bytes do not have the declared BLAKE3 digest",
                metadata={"declared": declared, "actual": actual},
            )
        return bytes(self._buffer)


def no_header() -> UploadMalformedError:
    """The error for a stream whose first message is not a header (or that is empty)."""
    return UploadMalformedError(
        "the first message of an upload must be its header", metadata={"problem": "no_header"}
    )


def second_header() -> UploadMalformedError:
    """The error for a header after the first message."""
    return UploadMalformedError(
        "an upload has exactly one header, first", metadata={"problem": "second_header"}
    )


def empty_part() -> UploadMalformedError:
    """The error for a message that carries no part."""
    return UploadMalformedError(
        "an upload message carries a header, a chunk or a trailer",
        metadata={"problem": "empty_message"},
    )
