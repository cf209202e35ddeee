"""Builds the backend a blob URL names and checks, at start, that it answers."""

from __future__ import annotations

from pathlib import Path

from tensorwasm_snapshot.backends.base import BlobBackend, BlobLocationError, parse_blob_url
from tensorwasm_snapshot.backends.local import LocalBackend
from tensorwasm_snapshot.errors import ObjectStoreUnavailableError


def open_backend(blob_url: str, work_dir: Path) -> BlobBackend:
    """The backend of `blob_url` (`file:///PATH`, or `s3://...` spooling under
    `work_dir/tmp`), checked.

    Raises:
        BlobLocationError: the URL is malformed, or what it names cannot be reached or used;
            the message names TENSORWASM_SNAPSHOT_BLOB_URL.
    """
    location = parse_blob_url(blob_url)
    if location.scheme == "file":
        assert location.path is not None
        try:
            local = LocalBackend(location.path)
            local.check()
        except OSError as exc:
            raise BlobLocationError(f"{location}: {exc}") from exc
        return local
    from tensorwasm_snapshot.backends.s3 import S3Backend  # boto3 only when it is used

    remote = S3Backend(location, Path(work_dir) / "tmp")
    try:
        remote.check()
    except ObjectStoreUnavailableError as exc:
        raise BlobLocationError(f"{location}: cannot reach the endpoint: {exc.detail}") from exc
    except BlobLocationError as exc:
        raise BlobLocationError(f"{location}: {exc.problem}") from exc
    return remote
