"""The blob backend interface, and the blob URL that chooses one."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

BLOB_URL_SETTING = "TENSORWASM_SNAPSHOT_BLOB_URL"


class BlobLocationError(Exception):
    """The blob URL is malformed, or what it names cannot be used (checked at start)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{BLOB_URL_SETTING}: {problem}")
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class BlobLocation:
    """A parsed blob URL: `scheme` "file" (with `path`) or "s3" (bucket, prefix, endpoint)."""

    scheme: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        query = f"?endpoint={self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{query}"


def parse_blob_url(url: str) -> BlobLocation:
    """Parses `file:///ABS/PATH` or `s3://BUCKET[/PREFIX][?endpoint=http(s)://HOST:PORT]`.

    Raises:
        BlobLocationError: anything else (a relative path, an unknown parameter, ...).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise BlobLocationError(f"{url!r}: a file URL needs an absolute path, file:///PATH")
        if parts.query or parts.fragment:
            raise BlobLocationError(f"{url!r}: a file URL takes no query")
        return BlobLocation("file", path=Path(urllib.parse.unquote(parts.path)))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not (3 <= len(bucket) <= 63) or not bucket.replace("-", "").replace(".", "").isalnum():
            raise BlobLocationError(f"{url!r}: {bucket!r} is not a valid bucket name")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"endpoint"})
        if unknown or parts.fragment or any(len(v) != 1 for v in query.values()):
            raise BlobLocationError(f"{url!r}: the only parameter is endpoint=URL, once")
        endpoint = query.get("endpoint", [""])[0]
        if endpoint:
            ep = urllib.parse.urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise BlobLocationError(f"{url!r}: endpoint must be http(s)://HOST[:PORT]")
        prefix = parts.path.strip("/")
        return BlobLocation("s3", bucket=bucket, prefix=prefix, endpoint=endpoint)
    raise BlobLocationError(f"{url!r}: expected file:///ABS/PATH or s3://BUCKET/PREFIX?endpoint=")


class BlobBackend(Protocol):
    """Committed blob files by digest: write-once installs, whole reads, listing, deletes.

    Safe from many threads. `spool_dir` is a local directory for files in flight (uploads
    being written, downloads being verified); the blob store empties it when it opens.
    Every method that talks to a remote store raises ObjectStoreUnavailableError when it does
    not answer.
    """

    spool_dir: Path

    def describe(self) -> str:
        """Where the blobs are, for logs and messages."""
        ...

    def check(self) -> None:
        """Raises unless the backend can store and read blobs now (health, start)."""
        ...

    def install(self, spooled: Path, digest: str, *, replace: bool = False) -> bool:
        """Stores the finished blob file `spooled` under `digest` unless one is there
        already, or over it with `replace` (a damaged copy); -> True if installed. The
        caller removes `spooled` afterwards if it is still there."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """A readable, seekable handle on the whole blob file (BlobNotFoundError)."""
        ...

    def read_head(self, digest: str, size: int) -> tuple[bytes, int]:
        """The first `size` bytes of the blob file and its total size (BlobNotFoundError)."""
        ...

    def delete(self, digest: str) -> None:
        """Deletes the blob durably; a no-op if it is absent."""
        ...

    def digests(self) -> Iterator[str]:
        """The digests of the stored blob files, intact or not (other names are skipped)."""
        ...

    def modified_ns(self, digest: str) -> int:
        """When the blob file was written, in nanoseconds since the epoch."""
        ...
