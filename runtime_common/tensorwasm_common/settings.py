"""Typed, frozen service settings read from TENSORWASM_<SVC>_* variables and CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from tensorwasm_common.net import is_loopback_host

if TYPE_CHECKING:
    from tensorwasm_common.tls import ClientTls, ServerTls

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _common_token_file() -> Path | None:
    """TENSORWASM_SERVICE_TOKEN_FILE, the fleet-wide default of `service_token_file`."""
    raw = os.environ.get("TENSORWASM_SERVICE_TOKEN_FILE", "")
    return Path(raw) if raw else None


def _common_ca_file() -> Path | None:
    """TENSORWASM_TLS_CA_FILE, the fleet-wide default of `tls_ca_file`."""
    raw = os.environ.get("TENSORWASM_TLS_CA_FILE", "")
    return Path(raw) if raw else None


EVENT_LOOPS = ("uvloop", "asyncio")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Settings every service has: where it listens, how it reports, the fleet credential.

    `service_token_file` (default: TENSORWASM_SERVICE_TOKEN_FILE, for every service) holds
    the fleet's service token: sent on every internal call, and required by the internal
    services (`fleet_only`) on theirs. Without it an internal service serves anyone on
    loopback only, unless `allow_no_service_token` is set.
    """

    # Internal services (all but the gateway) accept calls from the fleet only.
    fleet_only: ClassVar[bool] = True

    listen_address: str = "127.0.0.1:0"
    metrics_address: str = "127.0.0.1:0"
    ready_file: Path | None = None
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 5.0
    max_message_bytes: int = 64 << 20
    service_token_file: Path | None = dataclasses.field(default_factory=_common_token_file)
    allow_no_service_token: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_ca_file: Path | None = dataclasses.field(default_factory=_common_ca_file)
    # A plaintext port serving grpc.health.v1 only (Kubernetes' gRPC probes speak no TLS);
    # empty: none.
    health_address: str = ""
    # The asyncio event loop the service runs on: `uvloop` (libuv; less CPU per call) or
    # `asyncio` (the standard library's).
    event_loop: str = "uvloop"

    def __post_init__(self) -> None:
        _require_address("listen_address", self.listen_address)
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"event_loop: expected one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if self.metrics_address:
            _require_address("metrics_address", self.metrics_address)
        if self.health_address:
            _require_address("health_address", self.health_address)
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(
                f"log_level: expected DEBUG/INFO/WARNING/ERROR, got {self.log_level!r}"
            )
        if not 0 <= self.shutdown_grace_seconds < float("inf"):
            raise SettingsError("shutdown_grace_seconds: must be >= 0")
        if self.max_message_bytes < 1 << 20:
            raise SettingsError("max_message_bytes: must be at least 1 MiB")
        if self.service_token_file is not None:
            self.service_token()  # fail fast on a missing or malformed token file
        elif (
            self.fleet_only
            and not self.allow_no_service_token
            and not listens_on_loopback(self.listen_address)
        ):
            raise SettingsError(
                f"listen_address {self.listen_address} is beyond loopback and no service token "
                "is configured: set TENSORWASM_SERVICE_TOKEN_FILE (or the service's "
                "_SERVICE_TOKEN_FILE), or _ALLOW_NO_SERVICE_TOKEN=true to accept any caller"
            )
        self._check_tls()

    def _check_tls(self) -> None:
        from tensorwasm_common.tls import TlsFileError, check_server_tls, load_certificates

        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("tls_cert_file and tls_key_file: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise SettingsError("tls_client_ca_file: requires tls_cert_file and tls_key_file")
        try:
            server = self.server_tls()
            if server is not None:
                check_server_tls(server)
            if self.tls_ca_file is not None:
                load_certificates(self.tls_ca_file, "tls_ca_file")
        except TlsFileError as exc:
            raise SettingsError(str(exc)) from None

    def server_tls(self) -> ServerTls | None:
        """The server's TLS files, or None when it serves plaintext."""
        from tensorwasm_common.tls import ServerTls

        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTls(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    def client_tls(self) -> ClientTls | None:
        """How this service's internal calls use TLS, or None for plaintext."""
        from tensorwasm_common.tls import ClientTls

        if self.tls_ca_file is None:
            return None
        return ClientTls(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    def service_token(self) -> str | None:
        """The fleet's service token, or None when none is configured."""
        from tensorwasm_common.service_auth import ServiceTokenError, read_service_token

        if self.service_token_file is None:
            return None
        try:
            return read_service_token(self.service_token_file)
        except ServiceTokenError as exc:
            raise SettingsError(f"service_token_file: {exc}") from None


def listens_on_loopback(address: str) -> bool:
    """True when `address` (HOST:PORT) binds a loopback interface only."""
    host, _ = split_address(address)
    return is_loopback_host(host)


def split_address(address: str) -> tuple[str, int]:
    """Splits `host:port` (or `[v6]:port`) into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _require_address(field: str, value: str) -> None:
    try:
        split_address(value)
    except SettingsError as exc:
        raise SettingsError(f"{field}: {exc}") from None


def env_name(service: str, field: str) -> str:
    """The environment variable of a setting, e.g. TENSORWASM_GATEWAY_LISTEN_ADDRESS."""
    return f"TENSORWASM_{service.upper()}_{field.upper()}"


def load_settings(
    cls: type[T],
    service: str,
    *,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Builds `cls` from defaults, then the environment, then `--field-name` flags.

    Raises:
        SettingsError: a value does not parse or fails the class's validation.
    """
    environ = os.environ if environ is None else environ
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    values: dict[str, Any] = {}
    for field in fields:
        name = env_name(service, field.name)
        if name in environ:
            values[field.name] = _convert(name, hints[field.name], environ[name])
    if argv is not None:
        from tensorwasm_common.settings_doc import describe_all

        docs = {doc.name: doc for doc in describe_all(cls)}
        parser = argparse.ArgumentParser(
            prog=f"tensorwasm-{service}",
            description="Each flag overrides its variable; see docs/SETTINGS.md.",
        )
        for field in fields:
            doc = docs.get(field.name)
            parts = [doc.description] if doc and doc.description else []
            parts.append(f"env {env_name(service, field.name)}")
            if doc is not None:
                parts.append(f"default {doc.default}")
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                dest=field.name,
                help="; ".join(parts).replace("%", "%%"),
            )
        parsed = parser.parse_args(argv)
        for field in fields:
            raw = getattr(parsed, field.name)
            if raw is not None:
                values[field.name] = _convert(f"--{field.name}", hints[field.name], raw)
    try:
        return cls(**values)
    except SettingsError as exc:
        raise SettingsError(f"{service} settings: {exc}") from None


def _convert(source: str, annotation: Any, raw: str) -> Any:
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0]
    if optional and raw == "":
        return None
    try:
        if annotation is bool:
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError(raw)
            return lowered in _TRUE
        if annotation is int:
            return int(raw, 0)
        if annotation in (float, str, Path):
            return annotation(raw)
        if typing.get_origin(annotation) is tuple:
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        kind = getattr(annotation, "__name__", str(annotation))
        raise SettingsError(f"{source}: expected {kind}, got {raw!r}") from None
    raise TypeError(f"unsupported settings type {annotation!r} for {source}")
