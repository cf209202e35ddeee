"""Unit tests for tensorwasm_gateway.functions.upload: a chunked module, verified as it comes."""

from __future__ import annotations

import blake3
import pytest
from tensorwasm_common.errors import Reason, ServiceError
from tensorwasm_gateway.calls import DEFAULT_CONFIG
from tensorwasm_gateway.functions.upload import ModuleUpload, UploadHeader

MODULE = b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 40
DIGEST = blake3.blake3(MODULE).hexdigest()
CAP = 1 << 20


def upload(size: int = len(MODULE), digest: str = DIGEST) -> ModuleUpload:
    return ModuleUpload(UploadHeader("f", DEFAULT_CONFIG, size, digest), CAP)


def chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def refusal(error: pytest.ExceptionInfo[ServiceError]) -> tuple[str, Reason, dict[str, str]]:
    return error.value.code.name, error.value.reason, error.value.metadata


def test_chunks_with_the_declared_size_and_digest_are_the_module() -> None:
    in_header = upload()
    for chunk in chunks(MODULE):
        in_header.add_chunk(chunk)
    assert in_header.finish() == MODULE
    in_trailer = upload(digest="")
    for chunk in chunks(MODULE, 777):
        in_trailer.add_chunk(chunk)
    in_trailer.add_trailer(DIGEST)
    assert in_trailer.finish() == MODULE


def test_a_declared_size_over_the_cap_is_refused_before_any_byte() -> None:
    with pytest.raises(ServiceError) as caught:
        upload(size=CAP + 1)
    assert refusal(caught) == (
        "INVALID_ARGUMENT",
        Reason.TOO_LARGE,
        {"declared_bytes": str(CAP + 1), "limit_bytes": str(CAP)},
    )


def test_bytes_past_the_declared_size_are_refused_at_that_chunk() -> None:
    short = upload(size=len(MODULE) - 1)
    parts = chunks(MODULE, 4096)
    for chunk in parts[:-1]:
        short.add_chunk(chunk)
    with pytest.raises(ServiceError) as caught:
        short.add_chunk(parts[-1])
    assert refusal(caught)[:2] == ("INVALID_ARGUMENT", Reason.TOO_LARGE)
    assert caught.value.metadata["received_bytes"] == str(len(MODULE))


def test_a_truncated_upload_is_incomplete() -> None:
    truncated = upload()
    truncated.add_chunk(MODULE[:-10])
    with pytest.raises(ServiceError) as caught:
        truncated.finish()
    assert refusal(caught) == (
        "INVALID_ARGUMENT",
        Reason.UPLOAD_INCOMPLETE,
        {"declared_bytes": str(len(MODULE)), "received_bytes": str(len(MODULE) - 10)},
    )


def test_bytes_that_are_not_the_declared_digest_are_refused() -> None:
    tampered = bytearray(MODULE)
    tampered[100] ^= 1
    for digest_in_header in (True, False):
        wrong = upload(digest=DIGEST if digest_in_header else "")
        wrong.add_chunk(bytes(tampered))
        if not digest_in_header:
            wrong.add_trailer(DIGEST)
        with pytest.raises(ServiceError) as caught:
            wrong.finish()
        assert refusal(caught)[:2] == ("INVALID_ARGUMENT", Reason.UPLOAD_DIGEST_MISMATCH)
        assert caught.value.metadata["declared"] == DIGEST


@pytest.mark.parametrize(
    "problem",
    ["no_digest", "trailer_after_header_digest", "second_trailer", "chunk_after_trailer"],
)
def test_a_stream_out_of_order_is_malformed(problem: str) -> None:
    stream = upload(digest=DIGEST if problem == "trailer_after_header_digest" else "")
    stream.add_chunk(MODULE)
    with pytest.raises(ServiceError) as caught:
        if problem == "no_digest":
            stream.finish()
        elif problem == "chunk_after_trailer":
            stream.add_trailer(DIGEST)
            stream.add_chunk(b"x")
        else:
            stream.add_trailer(DIGEST)
            stream.add_trailer(DIGEST)
    assert refusal(caught)[:2] == ("INVALID_ARGUMENT", Reason.UPLOAD_MALFORMED)


def test_a_digest_that_is_not_blake3_hex_is_malformed() -> None:
    with pytest.raises(ServiceError) as caught:
        upload(digest="ABC")
    assert refusal(caught)[:2] == ("INVALID_ARGUMENT", Reason.UPLOAD_MALFORMED)
