"""Builds and runs the gateway server."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys

from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_common.blob_client import BlobClient
from tensorwasm_common.bootstrap import create_host, serve_forever
from tensorwasm_common.channels import open_channel, peer_serving
from tensorwasm_common.database import Database, DatabaseStartError
from tensorwasm_common.settings import SettingsError
from tensorwasm_common.snapshot_client import SnapshotClient
from tensorwasm_common.tls import ClientTls

from tensorwasm_gateway.access import (
    AuditLog,
    AuthFailureThrottle,
    BucketConfig,
    ConcurrencyCaps,
    Guard,
    GuardInterceptor,
    TokenReloader,
    TokenStore,
    TrustedProxies,
    limiter_for,
    open_sink,
)
from tensorwasm_gateway.functions import FunctionService, Registry
from tensorwasm_gateway.http import ConnectionLimits, start_http_face
from tensorwasm_gateway.http.app import FaceOptions
from tensorwasm_gateway.http.openai import token_tenant
from tensorwasm_gateway.instances import InstanceService, InstanceSnapshotService
from tensorwasm_gateway.invocations import InvocationService, InvocationStore
from tensorwasm_gateway.kernels import KernelCatalog, KernelService
from tensorwasm_gateway.limits import TenantCeilings
from tensorwasm_gateway.metrics import tenant_label
from tensorwasm_gateway.routing import open_executor_pool
from tensorwasm_gateway.servicer import GatewayServicer
from tensorwasm_gateway.settings import GatewaySettings
from tensorwasm_gateway.state import open_database
from tensorwasm_gateway.wire import FUNCTION_CONFIGS, encode_invocation_error

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GatewayService"].full_name
_log = logging.getLogger(__name__)


def build_guard(
    settings: GatewaySettings, *, face_secret: str = "", database: Database | None = None
) -> Guard:
    """Tokens, rate limits, concurrency caps and the audit sink from the settings (on a
    PostgreSQL `database`, rate limits shared with the other gateways on it).

    Raises:
        SettingsError: no token survived parsing and the gateway would listen beyond
            loopback without TENSORWASM_GATEWAY_ALLOW_UNAUTHENTICATED.
    """
    tokens = TokenStore.load(settings.tokens, settings.tokens_file)
    if not tokens.enabled:
        if not settings.loopback_only and not settings.allow_unauthenticated:
            raise SettingsError(
                "no valid bearer token is configured and the gateway would listen beyond "
                f"loopback ({settings.listen_address}); refusing to start"
            )
        _log.warning(
            "NO BEARER TOKENS CONFIGURED: authentication is OFF and every caller acts on "
            "every tenant (dev mode). Set TENSORWASM_GATEWAY_TOKENS for any shared use.",
            extra={"listen_address": settings.listen_address},
        )
    else:
        _log.info("bearer auth on", extra={"token_ids": list(tokens.token_ids)})
    tenant_layer = BucketConfig(settings.rate_limit_tenant_qps, settings.rate_limit_tenant_burst)
    token_layer = BucketConfig(settings.rate_limit_token_qps, settings.rate_limit_token_burst)
    limiter = limiter_for(database, tenant_layer, token_layer)
    workers = settings.worker_count
    caps = ConcurrencyCaps(
        {
            "invoke": per_worker_cap(settings.max_concurrent_invoke, workers),
            "write": per_worker_cap(settings.max_concurrent_write, workers),
            "read": per_worker_cap(settings.max_concurrent_read, workers),
            "admin": per_worker_cap(settings.max_concurrent_admin, workers),
        }
    )
    auth_failures = AuthFailureThrottle(
        BucketConfig(settings.auth_failure_qps, settings.auth_failure_burst)
    )
    return Guard(
        tokens,
        limiter,
        caps,
        AuditLog(open_sink(settings.audit_log)),
        trusted_proxies=TrustedProxies(settings.trusted_proxies, face_secret=face_secret),
        auth_failures=auth_failures,
    )


def per_worker_cap(cap: int, workers: int) -> int:
    """One worker process's share of a concurrency cap: the cap divided among the
    `workers` (rounded down, so that together they hold at most the cap), at least 1;
    0 (no cap) stays 0."""
    if cap == 0:
        return 0
    return max(1, cap // workers)


def _face_loopback_tls(settings: GatewaySettings) -> ClientTls | None:
    """The HTTP face's TLS to this gateway's own gRPC port: the fleet CA (else the
    certificate file, which then must hold its own root) and the gateway's key pair as the
    client certificate."""
    if settings.tls_cert_file is None:
        return None
    ca_file = settings.tls_ca_file or settings.tls_cert_file
    return ClientTls(ca_file, settings.tls_cert_file, settings.tls_key_file)


async def serve(settings: GatewaySettings, *, face_secret: str | None = None) -> None:
    """Serves until SIGTERM.

    One of several worker processes (`settings.worker_count` > 1) binds its ports with
    SO_REUSEPORT and takes the HTTP face's `face_secret` from the supervisor (the face's
    loopback calls may land on any worker); alone it makes its own secret.

    Health: SERVING while it can invoke (its registry answers and an executor replica is
    healthy); `dependency:snapshot` and `dependency:executor` report those dependencies
    (a store outage leaves deployed functions invocable, so it does not pull the gateway).
    """
    ceilings = TenantCeilings.load(settings.tenant_limits_file)  # malformed: fail at start
    try:
        database = await asyncio.to_thread(open_database, settings.database)
    except DatabaseStartError as exc:
        _log.error("cannot open the gateway's database: %s", exc)
        print(f"tensorwasm-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _log.info(
        "gateway database open",
        extra={"engine": database.engine.value, "database_url": database.url.redacted},
    )
    registry = Registry(database)
    store_channel = open_channel(
        settings.snapshot_address,
        max_message_bytes=settings.max_message_bytes,
        service_token=settings.service_token(),
        tls=settings.client_tls(),
        balanced=True,  # store replicas are interchangeable
    )
    executors = await open_executor_pool(settings)
    functions = FunctionService(
        registry,
        BlobClient(store_channel),
        executors,
        max_module_bytes=settings.max_module_bytes,
        configs=FUNCTION_CONFIGS,
        ceilings=ceilings,
        artifacts=SnapshotClient(store_channel),
    )
    functions.references.start(settings.release_retry_seconds)
    invocations = InvocationService(
        functions,
        InvocationStore(registry),
        encode_error=encode_invocation_error,
        retention_seconds=settings.invocation_retention_seconds,
        max_unfinished=settings.max_unfinished_invocations,
        lease_seconds=settings.lease_seconds,
    )
    _log.info("gateway id chosen", extra={"gateway_id": invocations.gateway_id})
    # what gateways whose lease expired left running is failed, not re-run
    await asyncio.to_thread(invocations.recover)
    invocations.start_heartbeat(settings.lease_heartbeat_seconds)
    invocations.start_sweeping(min(60.0, settings.invocation_retention_seconds))
    # Proves the in-process HTTP face's calls to the guard; never leaves the gateway's
    # processes (the supervisor hands its workers one secret).
    if face_secret is None:
        face_secret = secrets.token_urlsafe(32) if settings.http_address else ""
    reuse_port = settings.worker_count > 1
    guard = build_guard(settings, face_secret=face_secret, database=database)
    tenant_label.configure(settings.metrics_max_tenants)
    reloader = None
    if settings.tokens_file is not None:
        reloader = TokenReloader(guard, settings.tokens_file, settings.tokens)
        reloader.start(settings.tokens_reload_seconds)
    host = create_host(
        "gateway", settings, [SERVICE_NAME], layers=[GuardInterceptor(guard)], reuse_port=reuse_port
    )
    pb_grpc.add_GatewayServiceServicer_to_server(
        GatewayServicer(
            functions,
            invocations,
            InstanceService(
                functions,
                registry,
                executors,
                InstanceSnapshotService(
                    functions, registry, executors, SnapshotClient(store_channel)
                ),
            ),
            KernelService(
                KernelCatalog(database), SnapshotClient(store_channel), settings.kernel_hmac_key
            ),
        ),
        host.server,
    )

    http = None
    if settings.http_address:
        http = await start_http_face(
            settings.http_address,
            host.port,
            max_body_bytes=settings.max_message_bytes,
            timeout_seconds=settings.downstream_timeout_seconds,
            signature_ttl_seconds=settings.http_signature_cache_seconds,
            limits=ConnectionLimits(
                idle_timeout_seconds=settings.http_idle_timeout_seconds,
                read_timeout_seconds=settings.http_read_timeout_seconds,
                max_connections=settings.http_max_connections,
            ),
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            face_secret=face_secret,
            options=FaceOptions(
                invoke_timeout_seconds=settings.http_invoke_timeout_seconds,
                cors_allowed_origins=settings.cors_allowed_origins,
                trusted_hosts=settings.trusted_hosts,
                openai_models=settings.openai_models,
            ),
            # guard.tokens is replaced when the tokens file is reloaded: look it up per call
            openai_tenant_of=token_tenant(lambda values: guard.tokens.authenticate(values)),  # noqa: PLW0108
            tls=settings.server_tls(),
            loopback_tls=_face_loopback_tls(settings),
            reuse_port=reuse_port,
        )
        _log.info("http face listening", extra={"http_address": http.address})

    async def healthy() -> bool:
        await asyncio.to_thread(registry.check)
        return executors.any_healthy()

    async def store_serving() -> bool:
        return await peer_serving(store_channel)

    async def executor_serving() -> bool:
        return executors.any_healthy()

    async def cleanup() -> None:
        if reloader is not None:
            await reloader.close()
        if http is not None:
            await http.close()
        await invocations.close(settings.shutdown_grace_seconds)
        await functions.references.close()
        await executors.close()
        await store_channel.close()
        registry.close()
        guard.audit.close()

    await serve_forever(
        host,
        health_check=healthy,
        dependencies={"snapshot": store_serving, "executor": executor_serving},
        cleanup=cleanup,
    )
