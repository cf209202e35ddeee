"""Prometheus metrics: the per-service HTTP endpoint and the gRPC server series."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

from tensorwasm_common.settings import split_address

GRPC_REQUESTS = Counter(
    "tensorwasm_grpc_server_requests",
    "gRPC requests handled, by method and status code.",
    ["service", "method", "code"],
)
GRPC_DURATION = Histogram(
    "tensorwasm_grpc_server_request_duration_seconds",
    "Time to handle a gRPC request, by method.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

GRPC_ERRORS = Counter(
    "tensorwasm_grpc_server_errors",
    "Calls that ended in a typed error, by method and ErrorInfo reason.",
    ["service", "method", "reason"],
)


def start_metrics_endpoint(address: str) -> str:
    """Serves `/metrics` in a background thread; returns the bound `host:port`."""
    host, port = split_address(address)
    server, _thread = start_http_server(port, addr=host)
    bound_port = server.server_address[1]
    return f"{host}:{bound_port}"
