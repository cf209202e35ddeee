"""OpenTelemetry tracing configured by the standard OTEL_* variables, plus a JSON-lines exporter.

`OTEL_TRACES_EXPORTER` is a comma list of `otlp`, `console`, `jsonl` and `none`. When it is
unset, `otlp` is used if an OTLP endpoint is configured, else nothing is exported. `jsonl`
appends one JSON object per span to `TENSORWASM_TRACES_JSONL_PATH` (tests read it).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from tensorwasm_common.rpc_tracing import set_span_recording

JSONL_PATH_VARIABLE = "TENSORWASM_TRACES_JSONL_PATH"


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object a line, flushed per batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_to_dict(span)) + "\n" for span in spans]
        with self._lock:
            self._file.writelines(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def span_to_dict(span: ReadableSpan) -> dict[str, object]:
    """The fields of a span that tests and tools read."""
    context = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": format(context.trace_id, "032x") if context else None,
        "span_id": format(context.span_id, "016x") if context else None,
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
    }


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> TracerProvider:
    """Installs the global tracer provider for `service` with the configured exporters."""
    environ = os.environ if environ is None else environ
    service_name = environ.get("OTEL_SERVICE_NAME", f"tensorwasm-{service}")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporters = _exporters(environ)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    # With no exporter, the RPC hops propagate trace context without recording spans.
    set_span_recording(bool(exporters))
    trace.set_tracer_provider(provider)
    return provider


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return []
    has_endpoint = any(
        environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    default = "otlp" if has_endpoint else "none"
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", default).split(",")]
    exporters: list[SpanExporter] = []
    for name in filter(None, names):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            )
            exporters.append(OTLPSpanExporter(endpoint=endpoint or None))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "jsonl":
            path = environ.get(JSONL_PATH_VARIABLE)
            if not path:
                raise ValueError(f"OTEL_TRACES_EXPORTER=jsonl needs {JSONL_PATH_VARIABLE}")
            exporters.append(JsonLinesSpanExporter(Path(path)))
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    return exporters
