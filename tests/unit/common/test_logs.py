"""Unit tests for tensorwasm_common.logs: JSON log lines with trace context."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from tensorwasm_common.logs import JsonFormatter, configure_logging


def _record(
    message: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    *,
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    record = logging.LogRecord("tensorwasm.test", level, __file__, 10, message, args, exc_info)
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


def _format(record: logging.LogRecord, service: str = "gateway") -> dict[str, Any]:
    line = JsonFormatter(service).format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_basic_fields() -> None:
    record = _record(level=logging.WARNING)
    record.created = 1_700_000_000.25
    record.msecs = 250.0
    entry = _format(record)
    assert entry == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "WARNING",
        "service": "gateway",
        "logger": "tensorwasm.test",
        "message": "hello world",
    }


def test_no_trace_ids_outside_a_span() -> None:
    entry = _format(_record())
    assert "trace_id" not in entry
    assert "span_id" not in entry


def test_trace_and_span_ids_inside_an_active_span() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        with tracer.start_as_current_span("inner") as inner:
            inner_entry = _format(_record())
        outer_entry = _format(_record())
    after = _format(_record())
    provider.shutdown()

    trace_id = format(outer.get_span_context().trace_id, "032x")
    assert inner_entry["trace_id"] == trace_id
    assert inner_entry["span_id"] == format(inner.get_span_context().span_id, "016x")
    assert outer_entry["trace_id"] == trace_id
    assert outer_entry["span_id"] == format(outer.get_span_context().span_id, "016x")
    assert inner_entry["span_id"] != outer_entry["span_id"]
    assert len(trace_id) == 32
    assert len(inner_entry["span_id"]) == 16
    assert "trace_id" not in after


def test_extra_fields_are_added_and_non_scalars_repr() -> None:
    entry = _format(
        _record(
            extra={
                "function_id": "add",
                "attempt": 2,
                "ratio": 0.5,
                "cached": True,
                "exports": ["a", "b"],
                "_private": "hidden",
            }
        )
    )
    assert entry["function_id"] == "add"
    assert entry["attempt"] == 2
    assert entry["ratio"] == 0.5
    assert entry["cached"] is True
    assert entry["exports"] == "['a', 'b']"
    assert "_private" not in entry
    # None of the standard LogRecord attributes leak into the line.
    for standard in ("args", "msg", "levelno", "pathname", "lineno", "thread", "process"):
        assert standard not in entry


def test_extra_via_logger_call(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tensorwasm.test.extra")
    with caplog.at_level(logging.INFO, logger="tensorwasm.test.extra"):
        logger.info("deployed %s", "fn", extra={"tenant": "acme"})
    (record,) = caplog.records
    entry = _format(record)
    assert entry["message"] == "deployed fn"
    assert entry["tenant"] == "acme"
    assert entry["logger"] == "tensorwasm.test.extra"


def test_exception_is_formatted() -> None:
    try:
        raise KeyError("missing-key")
    except KeyError:
        exc_info = sys.exc_info()
    entry = _format(_record("failed", (), level=logging.ERROR, exc_info=exc_info))
    assert entry["level"] == "ERROR"
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("KeyError: 'missing-key'")


def test_non_ascii_is_kept_verbatim() -> None:
    line = JsonFormatter("jit").format(_record("café %s", ("ü",)))
    assert "café ü" in line
    assert json.loads(line)["message"] == "café ü"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_sends_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("snapshot", "debug")
    root = logging.getLogger()
    assert root.level == logging.DEBUG
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    logging.getLogger("tensorwasm.test.configured").debug("stored %d bytes", 12)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["service"] == "snapshot"
    assert entry["level"] == "DEBUG"
    assert entry["message"] == "stored 12 bytes"
    assert entry["logger"] == "tensorwasm.test.configured"


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_respects_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("snapshot", "WARNING")
    logger = logging.getLogger("tensorwasm.test.level")
    logger.info("dropped")
    logger.warning("kept")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["kept"]
