"""Blob files as objects in an S3-compatible bucket: `<prefix>/blobs/<digest[:2]>/<digest>`.

boto3 is the client: the reference S3 SDK, whose PutObject and CompleteMultipartUpload take
`IfNoneMatch`, with ranged parallel downloads (s3transfer) and the standard AWS_* credentials.

Installs are write-once: `If-None-Match: *` on PutObject (blobs up to `multipart_threshold`)
and on CompleteMultipartUpload (larger ones, parts uploaded in parallel); a 412 means the
object is there already. A server that answers 501 to the condition is remembered and then
asked HEAD before an unconditional PUT (the object is content-addressed, so a racing writer
stores the same plaintext). An object appears whole or not at all; a multipart upload cut
short leaves only parts, which are aborted (and which a bucket lifecycle rule should expire).
Reads download the whole object into an anonymous file in the spool directory, which the
blob store verifies before serving a byte.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from tensorwasm_snapshot import errors
from tensorwasm_snapshot.backends.base import BlobLocation, BlobLocationError
from tensorwasm_snapshot.backends.local import DIGEST_RE
from tensorwasm_snapshot.errors import ObjectStoreUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1 << 20
_log = logging.getLogger(__name__)
_CONTENT_RANGE_RE = re.compile(r"bytes \d+-\d+/(\d+)")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Backend:
    """Objects under `<prefix>/blobs/` of one bucket; many processes may share it."""

    def __init__(
        self,
        location: BlobLocation,
        spool_dir: Path,
        *,
        multipart_threshold: int = 16 * MIB,
        part_bytes: int = 8 * MIB,
        max_concurrency: int = 4,
        connect_timeout_seconds: float = 2.0,
        read_timeout_seconds: float = 30.0,
    ) -> None:
        """A client for `location` (credentials and region from the standard AWS_*
        variables); spools in `spool_dir` (created)."""
        if part_bytes < 5 * MIB or multipart_threshold < part_bytes:
            raise ValueError("need part_bytes >= 5 MiB and multipart_threshold >= part_bytes")
        self.location, self.bucket = location, location.bucket
        self._keys = f"{location.prefix}/blobs/" if location.prefix else "blobs/"
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._threshold, self._part_bytes = multipart_threshold, part_bytes
        self._concurrency = max_concurrency
        self._conditional_puts = True  # until the server says it cannot
        config = botocore.config.Config(
            connect_timeout=connect_timeout_seconds,
            read_timeout=read_timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=max(10, 2 * max_concurrency),
            s3={"addressing_style": "path"} if location.endpoint else {},
        )
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=location.endpoint or None,
            region_name=os.environ.get("AWS_REGION") or "us-east-1",
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=part_bytes,
            max_concurrency=max_concurrency,
        )

    def describe(self) -> str:
        """The blob URL."""
        return str(self.location)

    def key_of(self, digest: str) -> str:
        """The object key of a blob."""
        if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
            raise ValueError(f"not a digest: {digest!r}")
        return f"{self._keys}{digest[:2]}/{digest}"

    def check(self) -> None:
        """HEAD of the bucket.

        Raises:
            BlobLocationError: the bucket does not exist or the credentials are refused.
            ObjectStoreUnavailableError: the endpoint does not answer.
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            status = _status(exc)
            if status == 404 or _code(exc) in _MISSING | {"NoSuchBucket"}:
                raise BlobLocationError(f"bucket {self.bucket!r} does not exist") from exc
            if status in (401, 403):
                raise BlobLocationError(
                    f"access to bucket {self.bucket!r} denied (check AWS_ACCESS_KEY_ID and"
                    " AWS_SECRET_ACCESS_KEY)"
                ) from exc
            raise ObjectStoreUnavailableError("head bucket", str(exc)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ObjectStoreUnavailableError("head bucket", str(exc)) from exc

    def install(self, spooled: Path, digest: str, *, replace: bool = False) -> bool:
        """Uploads `spooled` write-once (over the object with `replace`)."""
        key = self.key_of(digest)
        with self._errors("put"):
            if replace:
                self._client.delete_object(Bucket=self.bucket, Key=key)
            if not self._conditional_puts and self._exists(key):
                return False
            try:
                self._upload(spooled, key, conditional=self._conditional_puts)
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                    return False
                if not (_status(exc) == 501 or _code(exc) == "NotImplemented"):
                    raise
                self._conditional_puts = False  # the server cannot: HEAD, then PUT
                if self._exists(key):
                    return False
                self._upload(spooled, key, conditional=False)
        return True

    def open(self, digest: str) -> BinaryIO:
        """The whole object, downloaded into an anonymous spool file."""
        fh = tempfile.TemporaryFile(dir=self.spool_dir)  # noqa: SIM115 (returned open)
        try:
            with self._errors("get", digest):
                self._client.download_fileobj(
                    self.bucket, self.key_of(digest), fh, Config=self._transfer
                )
            fh.seek(0)
        except BaseException:
            fh.close()
            raise
        return fh

    def read_head(self, digest: str, size: int) -> tuple[bytes, int]:
        """One ranged GET."""
        with self._errors("get", digest):
            try:
                reply = self._client.get_object(
                    Bucket=self.bucket, Key=self.key_of(digest), Range=f"bytes=0-{size - 1}"
                )
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 416:  # an empty object
                    return b"", 0
                raise
            with contextlib.closing(reply["Body"]):
                head = reply["Body"].read()
        found = _CONTENT_RANGE_RE.fullmatch(reply.get("ContentRange", ""))
        return head, int(found.group(1)) if found else reply["ContentLength"]

    def delete(self, digest: str) -> None:
        """DeleteObject (S3 answers success for an absent key)."""
        with self._errors("delete"):
            self._client.delete_object(Bucket=self.bucket, Key=self.key_of(digest))

    def digests(self) -> Iterator[str]:
        """Digest-named keys under `<prefix>/blobs/<xx>/`, in key order."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._keys
        )
        with self._errors("list"):
            for page in pages:
                for entry in page.get("Contents", []):
                    rest = entry["Key"][len(self._keys) :]
                    prefix, _, name = rest.partition("/")
                    if DIGEST_RE.fullmatch(name) and prefix == name[:2]:
                        yield name

    def modified_ns(self, digest: str) -> int:
        """The object's Last-Modified."""
        with self._errors("head", digest):
            reply = self._client.head_object(Bucket=self.bucket, Key=self.key_of(digest))
        return int(reply["LastModified"].timestamp() * 1e9)

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404 or _code(exc) in _MISSING:
                return False
            raise
        return True

    def _upload(self, spooled: Path, key: str, *, conditional: bool) -> None:
        size = spooled.stat().st_size
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
        if size <= self._threshold:
            with spooled.open("rb") as fh:
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=fh, ContentLength=size, **condition
                )
            return
        upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            offsets = range(0, size, self._part_bytes)
            with concurrent.futures.ThreadPoolExecutor(self._concurrency) as pool:
                etags = list(
                    pool.map(lambda o: self._upload_part(spooled, key, upload_id, o), offsets)
                )
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
                },
                **condition,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _upload_part(self, spooled: Path, key: str, upload_id: str, offset: int) -> str:
        with spooled.open("rb") as fh:
            fh.seek(offset)
            body = fh.read(self._part_bytes)
        reply = self._client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=offset // self._part_bytes + 1,
            Body=body,
        )
        return reply["ETag"]

    @contextlib.contextmanager
    def _errors(self, operation: str, digest: str | None = None) -> Iterator[None]:
        """Maps the client's errors: a missing key to BlobNotFoundError (when reading a
        digest), anything else (no answer, a server error, a refusal) to UNAVAILABLE."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            if digest is not None and (_status(exc) == 404 or _code(exc) in _MISSING):
                raise errors.BlobNotFoundError(digest) from None
            _log.warning("object store %s failed: %s", operation, exc)
            raise ObjectStoreUnavailableError(operation, str(exc)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            _log.warning("object store %s failed: %s", operation, exc)
            raise ObjectStoreUnavailableError(operation, str(exc)) from exc
