"""Unit tests for tensorwasm_common.status and the error classes it converts."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from tensorwasm_common.errors import (
    AlreadyExistsError,
    Code,
    DataLossError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)
from tensorwasm_common.status import (
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_VALUE_BYTES,
    STATUS_DETAILS_KEY,
    TRUNCATED,
    domain_of,
    downstream_error,
    error_from_rpc,
    grpc_code,
    to_grpc_status,
    to_status_proto,
)


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """What a failed grpc call exposes: code, details and trailing metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing


class QuotaError(ResourceExhaustedError):
    reason = Reason.RESOURCE_EXHAUSTED


def _unpack(status: status_pb2.Status) -> tuple[list[error_details_pb2.ErrorInfo], list[float]]:
    infos: list[error_details_pb2.ErrorInfo] = []
    retries: list[float] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retries.append(retry.retry_delay.ToTimedelta().total_seconds())
        else:
            raise AssertionError(f"unexpected detail {detail.type_url}")
    return infos, retries


@pytest.mark.parametrize(
    ("error_type", "code", "reason"),
    [
        (InvalidArgumentError, Code.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (NotFoundError, Code.NOT_FOUND, "NOT_FOUND"),
        (AlreadyExistsError, Code.ALREADY_EXISTS, "ALREADY_EXISTS"),
        (ResourceExhaustedError, Code.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
        (DataLossError, Code.DATA_LOSS, "DATA_LOSS"),
        (UnavailableError, Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (InternalError, Code.INTERNAL, "INTERNAL"),
        (ServiceError, Code.INTERNAL, "INTERNAL"),
    ],
)
def test_error_classes_fix_code_and_reason(
    error_type: type[ServiceError], code: Code, reason: str
) -> None:
    error = error_type("boom")
    assert error.code is code
    assert error.reason == reason
    assert error.message == "boom"
    assert str(error) == "boom"
    assert error.metadata == {}
    assert error.retry_after_seconds is None
    assert error.domain is None


def test_error_overrides_and_metadata_copy() -> None:
    metadata = {"k": "v"}
    error = NotFoundError(
        "gone",
        metadata=metadata,
        code=Code.FAILED_PRECONDITION,
        reason=Reason.INSTANCE_BUSY,
        domain="x.dev",
    )
    metadata["k"] = "changed"
    assert error.code is Code.FAILED_PRECONDITION
    assert error.reason == "INSTANCE_BUSY"
    assert error.domain == "x.dev"
    assert error.metadata == {"k": "v"}
    assert NotFoundError.code is Code.NOT_FOUND  # the class keeps its own code
    assert repr(error) == "NotFoundError(FAILED_PRECONDITION, INSTANCE_BUSY, 'gone')"


def test_code_numbers_are_the_canonical_grpc_numbers() -> None:
    for code in Code:
        assert grpc_code(code).value[0] == int(code)
        assert grpc_code(code).name == code.name


def test_domain_of() -> None:
    assert domain_of("gateway") == "gateway.tensorwasm.dev"


def test_to_status_proto_without_retry() -> None:
    error = QuotaError("too many calls", metadata={"tenant": "acme", "limit": "10"})
    status = to_status_proto(error, "gateway.tensorwasm.dev")
    assert status.code == int(Code.RESOURCE_EXHAUSTED) == 8
    assert status.message == "too many calls"
    infos, retries = _unpack(status)
    assert retries == []
    assert len(infos) == 1
    assert infos[0].reason == "RESOURCE_EXHAUSTED"
    assert infos[0].domain == "gateway.tensorwasm.dev"
    assert dict(infos[0].metadata) == {"tenant": "acme", "limit": "10"}


def test_to_status_proto_with_retry_and_explicit_domain() -> None:
    error = QuotaError("slow down", retry_after_seconds=1.5, domain="quota.example.com")
    status = to_status_proto(error, "gateway.tensorwasm.dev")
    assert len(status.details) == 2
    infos, _ = _unpack(status)
    assert infos[0].domain == "quota.example.com"
    retry = error_details_pb2.RetryInfo()
    status.details[1].Unpack(retry)
    assert retry.retry_delay == duration_pb2.Duration(seconds=1, nanos=500_000_000)


def test_negative_retry_is_clamped_to_zero() -> None:
    status = to_status_proto(QuotaError("x", retry_after_seconds=-3.0), "d")
    retry = error_details_pb2.RetryInfo()
    status.details[1].Unpack(retry)
    assert retry.retry_delay == duration_pb2.Duration(seconds=0, nanos=0)


def _trailer(error: ServiceError, domain: str = "peer.tensorwasm.dev") -> tuple[str, bytes]:
    return (STATUS_DETAILS_KEY, to_status_proto(error, domain).SerializeToString())


def test_error_from_rpc_rebuilds_the_peer_error() -> None:
    sent = QuotaError("quota exceeded", metadata={"tenant": "acme"}, retry_after_seconds=2.25)
    exc = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "quota exceeded",
        [("other-key", "ignored"), _trailer(sent)],
    )
    error = error_from_rpc(exc)
    assert type(error) is ServiceError
    assert error.code is Code.RESOURCE_EXHAUSTED
    assert error.reason == "RESOURCE_EXHAUSTED"
    assert error.domain == "peer.tensorwasm.dev"
    assert error.metadata == {"tenant": "acme"}
    assert error.retry_after_seconds == 2.25
    assert error.message == "quota exceeded"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_error_from_rpc_without_details_uses_the_code(code: grpc.StatusCode, reason: str) -> None:
    error = error_from_rpc(FakeRpcError(code, "plain failure", [("x-other", "1")]))
    assert error.code.name == code.name
    assert error.reason == reason
    assert error.domain is None
    assert error.metadata == {}
    assert error.retry_after_seconds is None
    assert error.message == "plain failure"


def test_error_from_rpc_with_empty_details_uses_the_code_name() -> None:
    error = error_from_rpc(FakeRpcError(grpc.StatusCode.ABORTED, ""))
    assert error.message == "ABORTED"
    assert error.code is Code.ABORTED


def test_downstream_passes_application_errors_through() -> None:
    sent = NotFoundError("no such blob", reason="BLOB_NOT_FOUND", metadata={"digest": "ab"})
    exc = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such blob", [_trailer(sent)])
    error = downstream_error(exc, "snapshot")
    assert not isinstance(error, UnavailableError)
    assert error.code is Code.NOT_FOUND
    assert error.reason == "BLOB_NOT_FOUND"
    assert error.metadata == {"digest": "ab"}
    assert error.message == "no such blob"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_downstream_transport_failures_become_unavailable(code: grpc.StatusCode) -> None:
    error = downstream_error(FakeRpcError(code, "connection refused"), "executor 10.0.0.1:1")
    assert isinstance(error, UnavailableError)
    assert error.code is Code.UNAVAILABLE
    assert error.reason == "UPSTREAM_UNAVAILABLE"
    assert error.message == "executor 10.0.0.1:1 is unavailable: connection refused"
    assert error.metadata == {"dependency": "executor 10.0.0.1:1"}
    assert error.retry_after_seconds == 1.0


def test_a_long_message_is_cut_with_a_marker() -> None:
    status = to_status_proto(InvalidArgumentError("é" * 10_000), "gateway.tensorwasm.dev")
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    assert status.message.endswith(TRUNCATED)
    assert status.message.startswith("é" * 100)


def test_metadata_values_and_their_total_are_bounded() -> None:
    metadata = {f"key{i}": "v" * 10_000 for i in range(50)}
    status = to_status_proto(InvalidArgumentError("bad", metadata=metadata), "x.tensorwasm.dev")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert all(len(value.encode()) <= MAX_METADATA_VALUE_BYTES for value in info.metadata.values())
    assert sum(len(k) + len(v) for k, v in info.metadata.items()) <= MAX_METADATA_BYTES + 16
    assert info.metadata["truncated"] == "true"
    assert info.metadata["key0"].endswith(TRUNCATED)


def test_short_messages_and_metadata_are_kept_as_they_are() -> None:
    error = InvalidArgumentError("bad field", metadata={"field": "limits.timeout"})
    status = to_status_proto(error, "x.tensorwasm.dev")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (status.message, dict(info.metadata)) == ("bad field", {"field": "limits.timeout"})


def test_a_status_with_the_longest_echo_fits_the_default_metadata_limit() -> None:
    error = InvalidArgumentError(
        "\u2603" * 10_000, metadata={f"k{i}": "\u2603" * 999 for i in range(9)}
    )
    status = to_grpc_status(error, "gateway.tensorwasm.dev")
    size = sum(len(key) + len(value) for key, value in status.trailing_metadata)
    size += len(urllib.parse.quote(status.details, safe=""))  # grpc-message is percent-encoded
    assert size < (8 << 10) // 2
