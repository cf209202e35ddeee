"""Where committed blob files live: a local directory or an S3-compatible bucket.

`BlobStore` (format, hashing, verification) works on any `BlobBackend`; `open_backend`
builds the one `TENSORWASM_SNAPSHOT_BLOB_URL` names (`file:///ABS/PATH` or
`s3://BUCKET/PREFIX?endpoint=URL`) and checks that it answers.
"""

from tensorwasm_snapshot.backends.base import (
    BLOB_URL_SETTING,
    BlobBackend,
    BlobLocation,
    BlobLocationError,
    parse_blob_url,
)
from tensorwasm_snapshot.backends.local import LocalBackend
from tensorwasm_snapshot.backends.open import open_backend

__all__ = [
    "BLOB_URL_SETTING",
    "BlobBackend",
    "BlobLocation",
    "BlobLocationError",
    "LocalBackend",
    "open_backend",
    "parse_blob_url",
]
