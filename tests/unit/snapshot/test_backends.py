"""The blob URL's grammar, and the S3 backend's write-once protocol against a fake client
(a real server is in tests/integration/test_store_backends.py): 412 is "already stored", and
a server that answers 501 to `If-None-Match` is asked HEAD before an unconditional PUT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from tensorwasm_snapshot.backends import BlobLocation, BlobLocationError, parse_blob_url
from tensorwasm_snapshot.backends.s3 import S3Backend
from tensorwasm_snapshot.errors import BlobNotFoundError, ObjectStoreUnavailableError

DIGEST = "ab" * 32


def test_parse_blob_urls() -> None:
    assert parse_blob_url("file:///var/lib/tw") == BlobLocation("file", path=Path("/var/lib/tw"))
    assert parse_blob_url("s3://tw-store/a/b/?endpoint=http://127.0.0.1:8333") == BlobLocation(
        "s3", bucket="tw-store", prefix="a/b", endpoint="http://127.0.0.1:8333"
    )
    assert parse_blob_url("s3://tw-store") == BlobLocation("s3", bucket="tw-store")


@pytest.mark.parametrize(
    "url",
    [
        "/var/lib/tw",
        "file://host/var",
        "file:///var?x=1",
        "s3://ab/p",
        "s3://Bad_Bucket/p",
        "s3://bucket/p?endpoint=ftp://h",
        "s3://bucket/p?endpoint=http://h&endpoint=http://i",
        "s3://bucket/p?region=eu",
        "gs://bucket/p",
    ],
)
def test_bad_blob_urls_name_the_setting(url: str) -> None:
    with pytest.raises(BlobLocationError, match="TENSORWASM_SNAPSHOT_BLOB_URL"):
        parse_blob_url(url)


def client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


class FakeS3:
    """Objects in a dict; `conditional` says whether the server understands If-None-Match."""

    def __init__(self, *, conditional: bool) -> None:
        self.conditional = conditional
        self.objects: dict[str, bytes] = {}
        self.calls: list[str] = []

    def put_object(  # boto3's argument names
        self,
        *,
        Key: str,  # noqa: N803
        Body: Any,  # noqa: N803
        IfNoneMatch: str = "",  # noqa: N803
        **_: Any,
    ) -> None:
        self.calls.append("put" + (" if-none-match" if IfNoneMatch else ""))
        if IfNoneMatch and not self.conditional:
            raise client_error(501, "NotImplemented")
        if IfNoneMatch and Key in self.objects:
            raise client_error(412, "PreconditionFailed")
        self.objects[Key] = Body.read()

    def head_object(self, *, Key: str, **_: Any) -> None:  # noqa: N803
        self.calls.append("head")
        if Key not in self.objects:
            raise client_error(404, "404")

    def delete_object(self, *, Key: str, **_: Any) -> None:  # noqa: N803
        self.objects.pop(Key, None)


def backend_on(tmp_path: Path, fake: FakeS3) -> S3Backend:
    backend = S3Backend(BlobLocation("s3", bucket="tw-store", prefix="p"), tmp_path / "spool")
    backend._client = fake  # type: ignore[assignment]
    return backend


def spooled(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "blob.part"
    path.write_bytes(data)
    return path


def test_conditional_puts_are_write_once(tmp_path: Path) -> None:
    fake = FakeS3(conditional=True)
    backend = backend_on(tmp_path, fake)
    assert backend.install(spooled(tmp_path, b"first"), DIGEST) is True
    assert backend.install(spooled(tmp_path, b"second"), DIGEST) is False
    assert fake.objects == {f"p/blobs/ab/{DIGEST}": b"first"}
    assert fake.calls == ["put if-none-match", "put if-none-match"]
    assert backend.install(spooled(tmp_path, b"third"), DIGEST, replace=True) is True
    assert fake.objects == {f"p/blobs/ab/{DIGEST}": b"third"}


def test_a_server_without_conditional_puts_gets_head_then_put(tmp_path: Path) -> None:
    fake = FakeS3(conditional=False)
    backend = backend_on(tmp_path, fake)
    assert backend.install(spooled(tmp_path, b"first"), DIGEST) is True
    assert fake.calls == ["put if-none-match", "head", "put"]  # the 501 is remembered
    assert backend.install(spooled(tmp_path, b"second"), DIGEST) is False
    assert fake.calls[3:] == ["head"]
    assert fake.objects == {f"p/blobs/ab/{DIGEST}": b"first"}


def test_errors_map_to_not_found_and_unavailable(tmp_path: Path) -> None:
    fake = FakeS3(conditional=True)
    backend = backend_on(tmp_path, fake)
    with pytest.raises(BlobNotFoundError), backend._errors("get", DIGEST):
        fake.head_object(Key="missing")
    with pytest.raises(ObjectStoreUnavailableError) as caught, backend._errors("put"):
        raise client_error(503, "SlowDown")
    assert caught.value.retry_after_seconds is not None
    assert caught.value.metadata == {"operation": "put"}
    with pytest.raises(ObjectStoreUnavailableError), backend._errors("get", DIGEST):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
