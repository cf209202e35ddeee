"""Unit tests for tensorwasm_common.tracing: the JSON-lines exporter and exporter selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from tensorwasm_common import tracing
from tensorwasm_common.tracing import (
    JSONL_PATH_VARIABLE,
    JsonLinesSpanExporter,
    configure_tracing,
    span_to_dict,
)


def _provider(exporter: SpanExporter, service_name: str = "tensorwasm-test") -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_exporter_writes_one_object_per_span(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "spans.jsonl"
    provider = _provider(JsonLinesSpanExporter(path))
    tracer = provider.get_tracer("test")
    attributes: dict[str, str | int] = {"function_id": "add", "count": 3}
    with (
        tracer.start_as_current_span("parent", attributes=attributes) as parent,
        tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child,
    ):
        child.set_status(Status(StatusCode.ERROR, "failed"))
    provider.shutdown()

    parent_ctx = parent.get_span_context()
    child_ctx = child.get_span_context()
    lines = _read(path)
    assert [line["name"] for line in lines] == ["child", "parent"]  # in order of ending
    child_line, parent_line = lines
    assert child_line["service"] == parent_line["service"] == "tensorwasm-test"
    assert child_line["trace_id"] == parent_line["trace_id"] == format(parent_ctx.trace_id, "032x")
    assert parent_line["span_id"] == format(parent_ctx.span_id, "016x")
    assert child_line["span_id"] == format(child_ctx.span_id, "016x")
    assert child_line["parent_span_id"] == parent_line["span_id"]
    assert parent_line["parent_span_id"] is None
    assert child_line["kind"] == "CLIENT"
    assert parent_line["kind"] == "INTERNAL"
    assert child_line["status"] == "ERROR"
    assert parent_line["status"] == "UNSET"
    assert parent_line["attributes"] == {"function_id": "add", "count": "3"}
    assert child_line["attributes"] == {}
    for line in lines:
        assert isinstance(line["start_time_unix_nano"], int)
        assert isinstance(line["end_time_unix_nano"], int)
        assert set(line) == {
            "name",
            "service",
            "trace_id",
            "span_id",
            "parent_span_id",
            "kind",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "status",
            "attributes",
        }


def test_jsonl_exporter_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    for name in ("first", "second"):
        provider = _provider(JsonLinesSpanExporter(path))
        with provider.get_tracer("test").start_as_current_span(name):
            pass
        provider.shutdown()
    assert [line["name"] for line in _read(path)] == ["first", "second"]


def test_jsonl_exporter_export_reports_success_and_flushes(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(path)
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    span = provider.get_tracer("test").start_span("direct")
    span.end()
    assert exporter.export([span]) is SpanExportResult.SUCCESS  # type: ignore[list-item]
    # Flushed per batch: readable before the exporter is shut down.
    assert [line["name"] for line in _read(path)] == ["direct"]
    assert _read(path)[0] == span_to_dict(span)  # type: ignore[arg-type]
    exporter.shutdown()
    provider.shutdown()


def _exporter_types(environ: dict[str, str]) -> list[type]:
    exporters = tracing._exporters(environ)
    try:
        return [type(e) for e in exporters]
    finally:
        for exporter in exporters:
            exporter.shutdown()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": ""}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, [OTLPSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, [OTLPSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, []),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_TRACES_EXPORTER": "none",
            },
            [],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"},
            [],
        ),
        ({"OTEL_TRACES_EXPORTER": " console , none ,, "}, [ConsoleSpanExporter]),
    ],
)
def test_exporter_selection(environ: dict[str, str], expected: list[type]) -> None:
    assert _exporter_types(environ) == expected


def test_jsonl_and_console_together(tmp_path: Path) -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "jsonl,console",
        JSONL_PATH_VARIABLE: str(tmp_path / "t" / "spans.jsonl"),
    }
    assert _exporter_types(environ) == [JsonLinesSpanExporter, ConsoleSpanExporter]
    assert (tmp_path / "t" / "spans.jsonl").exists()


def test_jsonl_without_a_path_is_an_error() -> None:
    with pytest.raises(ValueError, match=JSONL_PATH_VARIABLE):
        tracing._exporters({"OTEL_TRACES_EXPORTER": "jsonl"})


def test_unknown_exporter_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown exporter 'zipkin'"):
        tracing._exporters({"OTEL_TRACES_EXPORTER": "console,zipkin"})


def test_configure_tracing_installs_a_provider_that_writes_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed: list[trace.TracerProvider] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    path = tmp_path / "spans.jsonl"
    environ = {"OTEL_TRACES_EXPORTER": "jsonl", JSONL_PATH_VARIABLE: str(path)}

    provider = configure_tracing("gateway", environ)
    assert installed == [provider]
    assert provider.resource.attributes["service.name"] == "tensorwasm-gateway"
    with provider.get_tracer("test").start_as_current_span("CreateFunction"):
        pass
    provider.shutdown()  # flushes the batch processor

    lines = _read(path)
    assert [(line["name"], line["service"]) for line in lines] == [
        ("CreateFunction", "tensorwasm-gateway")
    ]


def test_configure_tracing_honours_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[trace.TracerProvider] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    provider = configure_tracing("gateway", {"OTEL_SERVICE_NAME": "custom-name"})
    assert installed == [provider]
    assert provider.resource.attributes["service.name"] == "custom-name"
    provider.shutdown()
