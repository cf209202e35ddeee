"""Server bootstrap: interceptors, health, reflection, metrics, ready file, graceful SIGTERM.

Health says what a service can still do. The whole server ("") and each of its gRPC
services are SERVING while the service can do its core job (its `health_check`); each
dependency it calls has a health name of its own, `dependency:<name>` (e.g.
`dependency:snapshot`, `dependency:dispatcher`), NOT_SERVING while that dependency is
unreachable. A load balancer watches ""; an operator or an alert watches the dependency
names, so an outage of a dependency never pulls a replica that still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tensorwasm_common.handlers import HandlerLayer
from tensorwasm_common.interceptors import HopInterceptor
from tensorwasm_common.logs import configure_logging
from tensorwasm_common.metrics import start_metrics_endpoint
from tensorwasm_common.service_auth import ServiceTokenInterceptor
from tensorwasm_common.settings import (
    ServerSettings,
    SettingsError,
    listens_on_loopback,
    load_settings,
    split_address,
)
from tensorwasm_common.tls import ReloadingServerCredentials
from tensorwasm_common.tracing import configure_tracing

_log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]
DEPENDENCY_PREFIX = "dependency:"


def dependency_health_name(dependency: str) -> str:
    """The grpc.health.v1 service name that reports one dependency (`dependency:<name>`)."""
    return DEPENDENCY_PREFIX + dependency


Cleanup = Callable[[], Awaitable[None]]
SettingsT = TypeVar("SettingsT", bound=ServerSettings)


@dataclass
class ServiceHost:
    """A gRPC server for one service with its standard companions."""

    service: str
    settings: ServerSettings
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)
    port: int = 0
    # The plaintext health-only server (`health_address`) and its bound port.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    # The server's one interceptor, for handlers run outside grpc's dispatch (a call
    # carried on another call's stream: `HopInterceptor.frame_behavior`).
    hop: HopInterceptor | None = None
    # Called when shutdown begins, before the grace period (a stream of calls stops
    # taking new ones then, as the server stops taking new RPCs).
    on_drain: list[Callable[[], None]] = field(default_factory=list)

    def set_serving(self, serving: bool) -> None:
        """Sets the health of the whole server and of each of its services."""
        for name in ["", *self.service_names]:
            self._set(name, serving)

    def set_dependency(self, dependency: str, serving: bool) -> None:
        """Sets the health of one dependency (`dependency:<name>`)."""
        self._set(dependency_health_name(dependency), serving)

    def _set(self, name: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        asyncio.get_running_loop().create_task(self.health.set(name, status))


def create_host(
    service: str,
    settings: ServerSettings,
    service_names: Sequence[str],
    *,
    layers: Sequence[HandlerLayer] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> ServiceHost:
    """Creates the server with tracing and error handling, health and reflection, on a
    TLS port when the settings name a certificate (mTLS with a client CA), else plaintext.

    One interceptor does tracing, deadlines, errors and metrics (`HopInterceptor`), with
    the service's `layers` folded in (inside the error handling: what they raise becomes a
    rich status); `interceptors` are separate grpc interceptors inside it (each costs an
    interceptor coroutine per call). An internal service (`settings.fleet_only`) with a
    service token first checks it on every call; without one it warns loudly (settings
    refused to start one beyond loopback unless allowed). Register the service's
    servicers on `host.server`, then call `serve_forever`. With `reuse_port` the ports
    are bound with SO_REUSEPORT, so that several processes of one service serve them
    together (the kernel spreads the connections); otherwise a port in use fails.
    """
    token = _fleet_guard(service, settings)
    hop = HopInterceptor(service, service_token=token, layers=layers)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    server = grpc.aio.server(
        interceptors=[hop, *interceptors],
        options=options,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    tls = settings.server_tls()
    if tls is None:
        port = server.add_insecure_port(settings.listen_address)
    else:
        credentials = ReloadingServerCredentials(tls).credentials()
        port = server.add_secure_port(settings.listen_address, credentials)
        _log.info(
            "serving TLS",
            extra={"mtls": tls.client_ca_file is not None, "cert_file": str(tls.cert_file)},
        )
    if port == 0:
        raise OSError(f"{service}: cannot listen on {settings.listen_address}")
    health_server, health_port = _health_only_server(service, settings, health_servicer, reuse_port)
    return ServiceHost(
        service, settings, server, health_servicer, names, port, health_server, health_port, hop
    )


def _health_only_server(
    service: str,
    settings: ServerSettings,
    servicer: health.aio.HealthServicer,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server | None, int]:
    """A plaintext server of `grpc.health.v1` alone on `health_address`, for probes that
    speak no TLS (Kubernetes' gRPC probes); it answers from the main server's statuses."""
    if not settings.health_address:
        return None, 0
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(settings.health_address)
    if port == 0:
        raise OSError(f"{service}: cannot listen on {settings.health_address}")
    return server, port


def _fleet_guard(service: str, settings: ServerSettings) -> ServiceTokenInterceptor | None:
    """The service-token check of an internal service, or a loud warning without a token."""
    if not settings.fleet_only:
        return None
    token = settings.service_token()
    if token is not None:
        _log.info("service token required on internal calls", extra={"service": service})
        return ServiceTokenInterceptor(token)
    _log.warning(
        "NO SERVICE TOKEN CONFIGURED: %s accepts calls from anyone who can reach %s. "
        "Set TENSORWASM_SERVICE_TOKEN_FILE for any shared use.",
        service,
        settings.listen_address,
        extra={
            "listen_address": settings.listen_address,
            "beyond_loopback": not listens_on_loopback(settings.listen_address),
        },
    )
    return None


def bootstrap(service: str, settings: ServerSettings) -> None:
    """Configures JSON logging and tracing for a service process."""
    configure_logging(service, settings.log_level)
    configure_tracing(service)


async def serve_forever(
    host: ServiceHost,
    *,
    health_check: HealthCheck | None = None,
    dependencies: Mapping[str, HealthCheck] | None = None,
    health_interval_seconds: float = 2.0,
    cleanup: Cleanup | None = None,
) -> None:
    """Starts the server, reports readiness, and on SIGTERM/SIGINT shuts down gracefully:
    health NOT_SERVING, drain for the grace period, stop, release resources.

    Args:
        host: The server and its health servicer.
        health_check: Whether the service can do its core job (the overall health).
        dependencies: One check per dependency, reported as `dependency:<name>`.
        health_interval_seconds: How often the checks run.
        cleanup: Releases the service's resources after the server stopped.
    """
    dependencies = dict(dependencies or {})
    settings = host.settings
    metrics_address = (
        start_metrics_endpoint(settings.metrics_address) if settings.metrics_address else ""
    )
    await host.server.start()
    health_address = ""
    if host.health_server is not None:
        await host.health_server.start()
        health_address = f"{split_address(settings.health_address)[0]}:{host.health_port}"
    bind_host, _ = split_address(settings.listen_address)
    grpc_address = f"{bind_host}:{host.port}"
    serving = await _check(health_check)
    host.set_serving(serving)
    reachable = await asyncio.gather(*map(_check, dependencies.values()))
    for dependency, up in zip(dependencies, reachable, strict=True):
        host.set_dependency(dependency, up)
    # What start-up built lives as long as the process: freeze it out of the cyclic
    # collector's way, so that a full collection under load walks only what calls left
    # behind, not the ~80,000 objects of the imported modules and the server (a full
    # pass over those stalls the event loop for tens of milliseconds; CPython's advice
    # for long-running servers).
    gc.collect()
    gc.freeze()
    if settings.ready_file is not None:
        _write_ready_file(
            settings.ready_file, host.service, grpc_address, metrics_address, health_address
        )
    _log.info(
        "serving",
        extra={
            "grpc_address": grpc_address,
            "metrics_address": metrics_address,
            "pid": os.getpid(),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    monitor = asyncio.create_task(
        _monitor_health(
            host, health_check, dependencies, [*reachable, serving], health_interval_seconds
        )
    )
    await stop.wait()
    _log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    monitor.cancel()
    host.set_serving(False)
    for drain in host.on_drain:
        drain()
    for dependency in dependencies:
        host.set_dependency(dependency, False)
    await host.server.stop(settings.shutdown_grace_seconds)
    if host.health_server is not None:
        await host.health_server.stop(0)
    if cleanup is not None:
        await cleanup()
    with contextlib.suppress(Exception):
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
    _log.info("stopped")


async def _check(health_check: HealthCheck | None) -> bool:
    if health_check is None:
        return True
    try:
        return await health_check()
    except Exception:
        _log.warning("health check failed", exc_info=True)
        return False


async def _monitor_health(
    host: ServiceHost,
    check: HealthCheck | None,
    dependencies: Mapping[str, HealthCheck],
    published: list[bool],
    interval: float,
) -> None:
    """Re-runs the checks every `interval` and publishes what changed since `published`
    (the dependencies' statuses, then the overall one)."""
    if check is None and not dependencies:
        return
    names = list(dependencies)
    checks = [*dependencies.values(), *([check] if check is not None else [])]
    last = published
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.gather(*map(_check, checks))
        for index, serving in enumerate(now):
            if serving == last[index]:
                continue
            if index < len(names):
                _log.warning(
                    "dependency health changed",
                    extra={"dependency": names[index], "serving": serving},
                )
                host.set_dependency(names[index], serving)
            else:
                _log.warning("health changed", extra={"serving": serving})
                host.set_serving(serving)
        last = now


def _write_ready_file(
    path: Path, service: str, grpc_address: str, metrics_address: str, health_address: str = ""
) -> None:
    """Writes the bound addresses atomically so a launcher can read them once complete."""
    payload = {
        "service": service,
        "pid": os.getpid(),
        "grpc_address": grpc_address,
        "metrics_address": metrics_address,
        "health_address": health_address,
    }
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(payload))
    os.replace(temp, path)


def run_main(
    service: str,
    settings_type: type[SettingsT],
    serve: Callable[[SettingsT], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> None:
    """The body of every service's `main()`: settings (fail fast), logging, tracing, serve."""
    settings = load_or_exit(service, settings_type, argv)
    bootstrap(service, settings)
    run_on_loop(serve(settings), settings.event_loop)


def load_or_exit(
    service: str, settings_type: type[SettingsT], argv: Sequence[str] | None = None
) -> SettingsT:
    """The service's settings from the environment and `argv` (default: the command
    line); a bad value prints what is wrong to stderr and exits 2."""
    try:
        return load_settings(settings_type, service, argv=sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"tensorwasm-{service}: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Runs `main` to completion on a new event loop of the kind named (`uvloop`, or
    `asyncio` for the standard library's), as `asyncio.run` does."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)
