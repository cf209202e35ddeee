"""The typed snapshot errors: codes, reasons, and re-typing of a peer's error by reason."""

from __future__ import annotations

from tensorwasm_common.errors import (
    Code,
    FingerprintMismatchError,
    ServiceError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    SnapshotSignatureError,
    UnsupportedSnapshotFormatError,
)
from tensorwasm_common.snapshot_errors import typed_snapshot_error


def test_codes_and_reasons() -> None:
    assert (SnapshotNotFoundError.code, SnapshotNotFoundError.reason) == (
        Code.NOT_FOUND,
        "SNAPSHOT_NOT_FOUND",
    )
    assert FingerprintMismatchError.code == Code.FAILED_PRECONDITION
    assert SnapshotCorruptError.code == SnapshotSignatureError.code == Code.DATA_LOSS
    assert UnsupportedSnapshotFormatError.reason == "UNSUPPORTED_SNAPSHOT_FORMAT"


def test_mismatch_names_both_fingerprints() -> None:
    error = FingerprintMismatchError.of("engine-a", "engine-b")
    assert error.metadata == {"expected": "engine-a", "actual": "engine-b"}
    assert "engine-b" in error.message


def test_peer_error_is_retyped_by_reason() -> None:
    peer = ServiceError(
        "made elsewhere",
        code=Code.FAILED_PRECONDITION,
        reason="ENGINE_FINGERPRINT_MISMATCH",
        metadata={"expected": "a", "actual": "b"},
        domain="snapshot.tensorwasm.dev",
    )
    typed = typed_snapshot_error(peer)
    assert isinstance(typed, FingerprintMismatchError)
    assert (typed.message, typed.metadata, typed.domain) == (
        "made elsewhere",
        {"expected": "a", "actual": "b"},
        "snapshot.tensorwasm.dev",
    )


def test_other_reasons_pass_through() -> None:
    peer = ServiceError("gone", code=Code.NOT_FOUND, reason="BLOB_NOT_FOUND")
    assert typed_snapshot_error(peer) is peer
