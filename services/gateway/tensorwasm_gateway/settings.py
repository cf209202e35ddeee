"""Settings of the gateway, from TENSORWASM_GATEWAY_* variables."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import ClassVar

from tensorwasm_common.database import (
    DatabaseUrl,
    DatabaseUrlError,
    Engine,
    parse_database_url,
    sqlite_url,
)
from tensorwasm_common.paths import default_data_dir
from tensorwasm_common.settings import (
    ServerSettings,
    SettingsError,
    listens_on_loopback,
    split_address,
)

# What a CreateFunction request may carry beside its module (id, config): the transport
# cap (max_message_bytes) exceeds the module cap by at least this much.
MODULE_REQUEST_HEADROOM_BYTES = 1 << 20
DATABASE_URL_SETTING = "TENSORWASM_GATEWAY_DATABASE_URL"
# The module cap: 64 MiB unless set, at most 256 MiB (as the original system).
DEFAULT_MAX_MODULE_BYTES = 64 << 20
MAX_MODULE_BYTES_CEILING = 256 << 20
PROCESSES_SETTING = "TENSORWASM_GATEWAY_PROCESSES"
MAX_PROCESSES = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings(ServerSettings):
    """Where the registry lives and which backends the gateway talks to."""

    # The public API: bearer tokens guard it, not the service token (which it only sends).
    fleet_only: ClassVar[bool] = False

    listen_address: str = "127.0.0.1:50051"
    executor_addresses: tuple[str, ...] = ("127.0.0.1:50052",)
    # A DNS name `host:port` whose every address is an executor replica (replaces
    # executor_addresses when set), re-resolved every executor_resolve_interval_seconds.
    executor_dns: str = ""
    executor_resolve_interval_seconds: float = 10.0
    executor_health_interval_seconds: float = 2.0
    # Bounded load: a replica holding more than this x the average calls is skipped.
    executor_load_factor: float = 1.25
    # Invoke and CallInstance requests up to this many bytes go to their executor as
    # frames of one stream per replica (a message each way instead of an RPC); bigger
    # ones as RPCs. 0: every call as an RPC.
    executor_call_stream_max_bytes: int = 64 << 10
    snapshot_address: str = "127.0.0.1:50054"
    database_path: Path = dataclasses.field(
        default_factory=lambda: default_data_dir() / "gateway" / "registry.sqlite3"
    )
    # Where functions, instances, async invocations, gateway leases and (on PostgreSQL)
    # rate-limit buckets live: sqlite:///ABS/PATH or postgresql://USER[:PASSWORD]@HOST:PORT/DB.
    # Empty: the SQLite file at database_path.
    database_url: str = ""
    # The largest module (at most 256 MiB); a larger one is refused TOO_LARGE, whether
    # sent whole (CreateFunction) or streamed (UploadFunction, whatever the message cap).
    max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES
    # The transport cap: a CreateFunction request carries the whole module, so it is the
    # module cap plus headroom by default (raise both together).
    max_message_bytes: int = DEFAULT_MAX_MODULE_BYTES + MODULE_REQUEST_HEADROOM_BYTES
    downstream_timeout_seconds: float = 330.0
    # The HTTP/JSON face (REST routes onto the gRPC API); empty: off.
    http_address: str = "127.0.0.1:8080"
    # The HTTP face caches export signatures (to type JSON args) this long; 0: no cache.
    http_signature_cache_seconds: float = 5.0
    # HTTP connections: closed after this long without a request in progress; a request
    # head must arrive within the read timeout of its first byte, a body may pause at most
    # that long; connections past the cap are answered 503 and closed as accepted.
    http_idle_timeout_seconds: float = 5.0
    http_read_timeout_seconds: float = 10.0
    http_max_connections: int = 256
    # The deadline of an HTTP invoke (/invoke, /invoke-stream, the OpenAI routes), as the
    # original's 30 s; a call past it is 504 invoke_timeout.
    http_invoke_timeout_seconds: float = 30.0
    # Browser origins allowed cross-origin (CORS); empty: none.
    cors_allowed_origins: tuple[str, ...] = ()
    # Host headers the HTTP face accepts (host or host:port, case-insensitive); empty: any.
    trusted_hosts: tuple[str, ...] = ()
    # Finished async invocations are kept this long, then purged.
    invocation_retention_seconds: float = 86400.0
    # At most this many async invocations pending or running at once (per gateway).
    max_unfinished_invocations: int = 1000
    # Gateways sharing a registry database: each renews its lease this often, for this
    # long; the unfinished invocations of a gateway whose lease expired are failed.
    lease_heartbeat_seconds: float = 5.0
    lease_seconds: float = 30.0
    # A module reference the snapshot store could not release (a failed deploy or a delete
    # during a store outage) is recorded and retried this often until the store takes it.
    release_retry_seconds: float = 5.0
    # JSON limit ceilings per tenant (see tensorwasm_gateway.limits); none when unset.
    tenant_limits_file: Path | None = None
    # Bearer tokens (tensorwasm_gateway.access.tokens); none: dev mode.
    tokens: str = ""
    tokens_file: Path | None = None
    # The tokens file is re-read when its mtime, size or inode changes (checked this often;
    # 0: only on SIGHUP, which always reloads it).
    tokens_reload_seconds: float = 5.0
    # The first this-many distinct tenants get their own metrics label; the rest `_other`.
    metrics_max_tenants: int = 100
    # Without tokens the gateway only listens on loopback, unless this is set.
    allow_unauthenticated: bool = False
    # Bearer tokens beyond loopback travel only over TLS (tls_cert_file), unless this is set
    # (a mesh's sidecar terminates TLS in front of a plaintext gateway).
    allow_plaintext_tokens: bool = False
    # Token buckets (see tensorwasm_gateway.access.ratelimit); burst 0 turns a layer off.
    rate_limit_tenant_qps: float = 10.0
    rate_limit_tenant_burst: int = 20
    rate_limit_token_qps: float = 0.0
    rate_limit_token_burst: int = 0
    # Failed authentications per peer address (a token bucket): past it, that address's
    # calls are refused AUTH_THROTTLED without checking the token; burst 0 turns it off.
    auth_failure_qps: float = 10.0
    auth_failure_burst: int = 20
    # Calls of each class in flight at once (0: no cap); a full class answers RESOURCE_EXHAUSTED.
    max_concurrent_invoke: int = 512
    max_concurrent_write: int = 32
    max_concurrent_read: int = 256
    max_concurrent_admin: int = 8
    # Audit sink: stdout, none, or file:/path (appended, one write per record).
    audit_log: str = "stdout"
    # Proxies (addresses or CIDR blocks) whose x-forwarded-for names the caller in the
    # audit log; from any other peer the header is ignored. Empty: none.
    trusted_proxies: tuple[str, ...] = ()
    # The OpenAI-compatible front's models: `model:function,...` (function ids).
    openai_model_map: str = ""
    # The kernel registry's HMAC-SHA256 key: a file holding 64 hex digits (32 bytes).
    # Unset: the registry answers publishes FAILED_PRECONDITION (reads still work).
    kernel_hmac_key_file: Path | None = None
    # Worker processes serving the gRPC port (and the HTTP face's) together with
    # SO_REUSEPORT under a supervisor (tensorwasm_gateway.supervisor); 1: one process, no
    # supervisor; 0: one per CPU. More than one needs a PostgreSQL database (the rate
    # limits are shared through it); the concurrency caps are divided among the workers.
    processes: int = 1

    def __post_init__(self) -> None:  # noqa: PLR0912, PLR0915 (one check per setting)
        super().__post_init__()
        if not 0.0 <= self.tokens_reload_seconds < float("inf"):
            raise SettingsError("tokens_reload_seconds: must be >= 0")
        if self.metrics_max_tenants < 0:
            raise SettingsError("metrics_max_tenants: must be >= 0")
        if not self.executor_addresses and not self.executor_dns:
            raise SettingsError("executor_addresses: at least one executor is required")
        if self.executor_dns:
            try:
                split_address(self.executor_dns)
            except SettingsError as exc:
                raise SettingsError(f"executor_dns: {exc}") from None
        if not 0.1 <= self.executor_resolve_interval_seconds < float("inf"):
            raise SettingsError("executor_resolve_interval_seconds: must be >= 0.1")
        if not 0.1 <= self.executor_health_interval_seconds < float("inf"):
            raise SettingsError("executor_health_interval_seconds: must be >= 0.1")
        if not 1.0 <= self.executor_load_factor < float("inf"):
            raise SettingsError("executor_load_factor: must be >= 1.0")
        if self.executor_call_stream_max_bytes < 0:
            raise SettingsError("executor_call_stream_max_bytes: must be >= 0")
        if self.http_address:
            try:
                split_address(self.http_address)
            except SettingsError as exc:
                raise SettingsError(f"http_address: {exc}") from None
        if not 0.0 <= self.http_signature_cache_seconds < float("inf"):
            raise SettingsError("http_signature_cache_seconds: must be >= 0")
        for name in (
            "http_idle_timeout_seconds",
            "http_read_timeout_seconds",
            "http_invoke_timeout_seconds",
        ):
            if not 0.1 <= getattr(self, name) < float("inf"):
                raise SettingsError(f"{name}: must be >= 0.1")
        if self.http_max_connections < 1:
            raise SettingsError("http_max_connections: must be >= 1")
        if not 1.0 <= self.invocation_retention_seconds < float("inf"):
            raise SettingsError("invocation_retention_seconds: must be >= 1")
        if self.max_unfinished_invocations < 1:
            raise SettingsError("max_unfinished_invocations: must be >= 1")
        if not 0.05 <= self.lease_heartbeat_seconds < float("inf"):
            raise SettingsError("lease_heartbeat_seconds: must be >= 0.05")
        if not 2 * self.lease_heartbeat_seconds <= self.lease_seconds < float("inf"):
            raise SettingsError("lease_seconds: must be >= 2 x lease_heartbeat_seconds")
        if not 0.05 <= self.release_retry_seconds < float("inf"):
            raise SettingsError("release_retry_seconds: must be >= 0.05")
        for address in (*self.executor_addresses, self.snapshot_address):
            try:
                split_address(address)
            except SettingsError as exc:
                raise SettingsError(f"executor_addresses/snapshot_address: {exc}") from None
        if self.max_module_bytes > MAX_MODULE_BYTES_CEILING:
            raise SettingsError("max_module_bytes: at most 256 MiB")
        if not 8 <= self.max_module_bytes <= self.max_message_bytes - MODULE_REQUEST_HEADROOM_BYTES:
            # Else a module just over the cap is cut off by the transport: a bare
            # RESOURCE_EXHAUSTED instead of the typed TOO_LARGE.
            raise SettingsError(
                "max_module_bytes: must be in [8, max_message_bytes - 1 MiB] (the rest of "
                "a CreateFunction request must fit beside the largest module)"
            )
        self._check_security()
        self.database  # noqa: B018 -- a malformed URL fails at start
        self._check_processes()
        self.openai_models  # noqa: B018 (a malformed map fails at start)
        self.kernel_hmac_key  # noqa: B018 (a missing or malformed key file fails at start)
        from tensorwasm_gateway.limits import TenantCeilings  # (it imports these settings' errors)

        TenantCeilings.load(self.tenant_limits_file)  # a malformed file fails at start

    def _check_processes(self) -> None:
        """Workers share the rate limits through a PostgreSQL database; SQLite's limits
        live in each process, so several workers would admit several times the rate."""
        if not 0 <= self.processes <= MAX_PROCESSES:
            raise SettingsError(
                f"processes ({PROCESSES_SETTING}): must be in [0, {MAX_PROCESSES}] "
                f"(0: one per CPU), got {self.processes}"
            )
        if self.processes != 1 and self.database.engine is Engine.SQLITE:
            raise SettingsError(
                f"processes ({PROCESSES_SETTING}={self.processes}): several gateway "
                "processes need a PostgreSQL database (TENSORWASM_GATEWAY_DATABASE_URL="
                "postgresql://...): on SQLite each process would keep its own rate-limit "
                "buckets and together admit several times the configured rate"
            )

    @property
    def worker_count(self) -> int:
        """How many gateway processes serve: `processes`, or the usable CPUs for 0."""
        if self.processes:
            return self.processes
        return max(1, len(os.sched_getaffinity(0)))

    def _check_security(self) -> None:
        rates = (
            self.rate_limit_tenant_qps,
            self.rate_limit_tenant_burst,
            self.rate_limit_token_qps,
            self.rate_limit_token_burst,
        )
        if not all(0 <= value < math.inf for value in rates):
            raise SettingsError("rate_limit_*: must be finite and >= 0")
        auth_failures = (self.auth_failure_qps, self.auth_failure_burst)
        if not all(0 <= value < math.inf for value in auth_failures):
            raise SettingsError("auth_failure_qps/_burst: must be finite and >= 0")
        caps = (
            self.max_concurrent_invoke,
            self.max_concurrent_write,
            self.max_concurrent_read,
            self.max_concurrent_admin,
        )
        if min(caps) < 0:
            raise SettingsError("max_concurrent_*: must be >= 0 (0: no cap)")
        if not (
            self.audit_log in ("stdout", "none")
            or (self.audit_log.startswith("file:") and len(self.audit_log) > len("file:"))
        ):
            raise SettingsError("audit_log: expected stdout, none or file:/path")
        from tensorwasm_gateway.access.proxies import TrustedProxies  # (grpc-free, lazy)

        try:
            TrustedProxies(self.trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"trusted_proxies: {exc}") from None
        if self.tokens_file is not None and not self.tokens_file.is_file():
            raise SettingsError(f"tokens_file: {self.tokens_file} is not a readable file")
        configured = bool(self.tokens.strip()) or self.tokens_file is not None
        if not configured and not self.allow_unauthenticated and not self.loopback_only:
            raise SettingsError(
                f"listen_address {self.listen_address} is beyond loopback and no bearer tokens "
                "are configured: set TENSORWASM_GATEWAY_TOKENS (or _TOKENS_FILE), or "
                "TENSORWASM_GATEWAY_ALLOW_UNAUTHENTICATED=true to serve without auth"
            )
        self._check_plaintext_tokens(configured)

    def _check_plaintext_tokens(self, tokens_configured: bool) -> None:
        """Bearer tokens beyond loopback only over TLS (or with the explicit allowance)."""
        if not tokens_configured or self.tls_cert_file is not None or self.allow_plaintext_tokens:
            return
        for name, address in (
            ("listen_address", self.listen_address),
            ("http_address", self.http_address),
        ):
            if address and not listens_on_loopback(address):
                raise SettingsError(
                    f"{name} {address} is beyond loopback and bearer tokens would travel in "
                    "plaintext: set TENSORWASM_GATEWAY_TLS_CERT_FILE and _TLS_KEY_FILE, or "
                    "TENSORWASM_GATEWAY_ALLOW_PLAINTEXT_TOKENS=true when a proxy or mesh "
                    "terminates TLS in front of the gateway"
                )

    @property
    def database(self) -> DatabaseUrl:
        """The parsed database URL (database_url, else the SQLite file at database_path)."""
        value = self.database_url or sqlite_url(self.database_path)
        try:
            return parse_database_url(value, DATABASE_URL_SETTING)
        except DatabaseUrlError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def openai_models(self) -> dict[str, str]:
        """The OpenAI model map, model -> function id.

        Raises:
            SettingsError: an entry is not `model:function`, or a model appears twice.
        """
        models: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in self.openai_model_map.split(","))):
            model, colon, function = (part.strip() for part in entry.rpartition(":"))
            if not colon or not model or not function or model in models:
                raise SettingsError(
                    f"openai_model_map: {entry!r} is not a new `model:function` entry"
                )
            models[model] = function
        return models

    @property
    def kernel_hmac_key(self) -> bytes | None:
        """The kernel registry's signing key, or None when no key file is set.

        Raises:
            SettingsError: the file is unreadable or does not hold exactly 64 hex digits.
        """
        if self.kernel_hmac_key_file is None:
            return None
        from tensorwasm_gateway.kernels.signing import KeyFileError, read_key_file  # (grpc-free)

        try:
            return read_key_file(self.kernel_hmac_key_file)
        except KeyFileError as exc:
            raise SettingsError(f"kernel_hmac_key_file: {exc}") from None

    @property
    def loopback_only(self) -> bool:
        """True when the gateway listens on a loopback address only."""
        return listens_on_loopback(self.listen_address)
