"""Unit tests for request ids (tensorwasm_gateway.request_ids), the executor's call log, and
the bounded tenant label of the gateway's metrics."""

from __future__ import annotations

import logging
import re
import uuid

import pytest
from tensorwasm_executor.call_log import request_id_of
from tensorwasm_gateway.metrics import OTHER_TENANT, TenantLabels
from tensorwasm_gateway.request_ids import (
    CURRENT_REQUEST_ID,
    REQUEST_ID_KEY,
    downstream_metadata,
    new_request_id,
    request_id_from,
)


def test_a_valid_caller_id_is_kept() -> None:
    assert request_id_from([("a", "b"), (REQUEST_ID_KEY, "req-1.2:3_x")]) == "req-1.2:3_x"


@pytest.mark.parametrize("supplied", [None, [], [(REQUEST_ID_KEY, "has space")],
                                      [(REQUEST_ID_KEY, "x" * 129)], [(REQUEST_ID_KEY, "")],
                                      [(REQUEST_ID_KEY, b"bytes")]])  # fmt: skip
def test_otherwise_a_fresh_uuid_is_chosen(supplied: list[tuple[str, object]] | None) -> None:
    first, second = request_id_from(supplied), request_id_from(supplied)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_a_fresh_id_is_a_random_uuid4() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id  # 32 lowercase hex digits
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_downstream_metadata_carries_the_current_id() -> None:
    assert downstream_metadata() is None
    token = CURRENT_REQUEST_ID.set("abc")
    try:
        assert downstream_metadata() == ((REQUEST_ID_KEY, "abc"),)
    finally:
        CURRENT_REQUEST_ID.reset(token)
    assert downstream_metadata() is None


def test_executor_call_log_reads_the_id() -> None:
    assert request_id_of(None) == ""
    assert request_id_of((("other", "v"),)) == ""
    assert request_id_of(((REQUEST_ID_KEY, "r1"), (REQUEST_ID_KEY, "r2"))) == "r1"
    assert request_id_of(((REQUEST_ID_KEY, "y" * 500),)) == "y" * 128


def test_call_log_interceptor_logs_invokes_only(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    from types import SimpleNamespace

    from tensorwasm_executor.call_log import CallLogInterceptor

    async def continuation(details: object) -> str:
        return "handler"

    async def scenario() -> None:
        interceptor = CallLogInterceptor()
        for method in ("Invoke", "PrepareModule", "InvokeStream"):
            details = SimpleNamespace(
                method=f"/tensorwasm.executor.v1.ExecutorService/{method}",
                invocation_metadata=((REQUEST_ID_KEY, f"id-{method}"),),
            )
            assert await interceptor.intercept_service(continuation, details) == "handler"

    with caplog.at_level(logging.INFO, logger="tensorwasm_executor.calls"):
        asyncio.run(scenario())
    logged = [(r.method, r.request_id) for r in caplog.records if r.getMessage() == "call received"]  # type: ignore[attr-defined]
    assert logged == [("Invoke", "id-Invoke"), ("InvokeStream", "id-InvokeStream")]


def test_tenant_labels_are_bounded() -> None:
    labels = TenantLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d", "b", "")] == [
        "a", "b", OTHER_TENANT, "a", OTHER_TENANT, "b", ""
    ]  # fmt: skip
    labels.configure(3)
    assert labels("c") == "c"
    assert labels("e") == OTHER_TENANT
    assert TenantLabels(0)("a") == OTHER_TENANT
