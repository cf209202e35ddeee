"""The gateway's security settings: refusing to listen beyond loopback without tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorwasm_common.settings import SettingsError, load_settings
from tensorwasm_gateway.server import build_guard
from tensorwasm_gateway.settings import GatewaySettings


def _load(**env: str) -> GatewaySettings:
    environ = {f"TENSORWASM_GATEWAY_{k.upper()}": v for k, v in env.items()}
    return load_settings(GatewaySettings, "gateway", environ=environ)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::1]:0", "localhost:0"])
def test_loopback_without_tokens_is_dev_mode(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _load(listen_address=address)
    guard = build_guard(settings)
    assert not guard.tokens.enabled
    assert "NO BEARER TOKENS CONFIGURED" in caplog.text


@pytest.mark.parametrize("address", ["0.0.0.0:50051", "10.1.2.3:0", "[::]:0"])
def test_beyond_loopback_without_tokens_is_refused(address: str) -> None:
    with pytest.raises(SettingsError, match="beyond loopback"):
        _load(listen_address=address)
    assert _load(listen_address=address, allow_unauthenticated="true").allow_unauthenticated
    _load(
        listen_address=address,
        tokens="tok-0123456789abcdef:tenant=*",
        allow_plaintext_tokens="true",
    )


@pytest.mark.parametrize(
    ("field", "address"), [("listen_address", "0.0.0.0:50051"), ("http_address", "10.1.2.3:8080")]
)
def test_bearer_tokens_beyond_loopback_need_tls(field: str, address: str) -> None:
    tokens = "tok-0123456789abcdef:tenant=*"
    with pytest.raises(SettingsError, match=f"{field} {address} is beyond loopback and bearer"):
        _load(**{field: address}, tokens=tokens)
    allowed = _load(**{field: address}, tokens=tokens, allow_plaintext_tokens="true")
    assert allowed.allow_plaintext_tokens
    assert _load(tokens=tokens).tls_cert_file is None  # loopback: plaintext is fine


def test_all_tokens_malformed_beyond_loopback_is_refused() -> None:
    settings = _load(
        listen_address="0.0.0.0:0", tokens="tok:tenant=", allow_plaintext_tokens="true"
    )
    with pytest.raises(SettingsError, match="refusing to start"):
        build_guard(settings)


def test_tokens_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="tokens_file"):
        _load(tokens_file=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rate_limit_tenant_qps", "-1"),
        ("rate_limit_token_burst", "-5"),
        ("max_concurrent_invoke", "-1"),
        ("audit_log", "syslog"),
        ("audit_log", "file:"),
        ("http_idle_timeout_seconds", "0"),
        ("http_read_timeout_seconds", "inf"),
        ("http_max_connections", "0"),
        ("executor_call_stream_max_bytes", "-1"),
    ],
)
def test_invalid_values(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name.split("_", maxsplit=1)[0]):
        _load(**{name: value})


def test_the_call_stream_cap_defaults_to_64_kib_and_0_turns_it_off() -> None:
    assert _load().executor_call_stream_max_bytes == 64 << 10
    assert _load(executor_call_stream_max_bytes="0").executor_call_stream_max_bytes == 0


def test_lease_settings() -> None:
    settings = _load(lease_heartbeat_seconds="0.5", lease_seconds="3")
    assert (settings.lease_heartbeat_seconds, settings.lease_seconds) == (0.5, 3.0)
    defaults = _load()
    assert (defaults.lease_heartbeat_seconds, defaults.lease_seconds) == (5.0, 30.0)
    with pytest.raises(SettingsError, match="lease_heartbeat_seconds"):
        _load(lease_heartbeat_seconds="0")
    with pytest.raises(SettingsError, match="lease_seconds"):
        _load(lease_heartbeat_seconds="5", lease_seconds="9")


@pytest.mark.parametrize("module_mib", [64, 63.5])
def test_the_transport_cap_must_exceed_the_module_cap(module_mib: float) -> None:
    # A module just over the module cap must reach the gateway to get TOO_LARGE.
    with pytest.raises(SettingsError, match="max_module_bytes"):
        _load(max_message_bytes=str(64 << 20), max_module_bytes=str(int(module_mib * (1 << 20))))
    assert _load(max_message_bytes=str(64 << 20), max_module_bytes=str(63 << 20))


def test_the_default_caps_leave_room_beside_the_largest_module() -> None:
    settings = _load()
    assert settings.max_module_bytes == 64 << 20  # the original system's default
    assert settings.max_message_bytes - settings.max_module_bytes >= 1 << 20


def test_the_module_cap_goes_up_to_256_mib() -> None:
    largest = _load(max_module_bytes=str(256 << 20), max_message_bytes=str(257 << 20))
    assert largest.max_module_bytes == 256 << 20
    with pytest.raises(SettingsError, match="max_module_bytes"):
        _load(max_module_bytes=str((256 << 20) + 1), max_message_bytes=str(300 << 20))


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert _load(trusted_proxies="127.0.0.1, 10.0.0.0/8,::1").trusted_proxies == (
        "127.0.0.1",
        "10.0.0.0/8",
        "::1",
    )
    assert _load().trusted_proxies == ()
    with pytest.raises(SettingsError, match="trusted_proxies"):
        _load(trusted_proxies="10.0.0.0/8,proxy.example")


def test_release_retry_setting() -> None:
    assert _load().release_retry_seconds == 5.0
    assert _load(release_retry_seconds="0.5").release_retry_seconds == 0.5
    for bad in ("0", "-1", "inf"):
        with pytest.raises(SettingsError, match="release_retry_seconds"):
            _load(release_retry_seconds=bad)


def test_database_url_defaults_to_the_sqlite_file_and_accepts_postgres(tmp_path: Path) -> None:
    from tensorwasm_common.database import Engine

    default = _load(database_path=str(tmp_path / "registry.sqlite3"))
    assert default.database.engine is Engine.SQLITE
    assert default.database.sqlite_path == tmp_path / "registry.sqlite3"
    postgres = _load(database_url="postgresql://tw:pw@db:5432/gateway")
    assert postgres.database.engine is Engine.POSTGRESQL


@pytest.mark.parametrize("url", ["mysql://u@h:1/db", "sqlite://relative.db", "postgresql://h/db"])
def test_a_malformed_database_url_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(SettingsError, match="TENSORWASM_GATEWAY_DATABASE_URL"):
        _load(database_url=url)


def test_http_face_compatibility_settings_come_from_the_environment() -> None:
    settings = _load(
        cors_allowed_origins="https://a.example, https://b.example",
        trusted_hosts="api.example.com,api.example.com:8443",
        http_invoke_timeout_seconds="12.5",
        openai_model_map="gpt-x:echo",
    )
    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example")
    assert settings.trusted_hosts == ("api.example.com", "api.example.com:8443")
    assert settings.http_invoke_timeout_seconds == 12.5
    assert settings.openai_models == {"gpt-x": "echo"}
    assert _load().http_invoke_timeout_seconds == 30.0  # the original's deadline
    with pytest.raises(SettingsError, match="http_invoke_timeout_seconds"):
        _load(http_invoke_timeout_seconds="0")
    with pytest.raises(SettingsError, match="openai_model_map"):
        _load(openai_model_map="no-function")
