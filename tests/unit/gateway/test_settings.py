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
    _load(listen_address=address, tokens="tok-0123456789abcdef:tenant=*")


def test_all_tokens_malformed_beyond_loopback_is_refused() -> None:
    settings = _load(listen_address="0.0.0.0:0", tokens="tok:tenant=")
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
    ],
)
def test_invalid_values(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name.split("_", maxsplit=1)[0]):
        _load(**{name: value})


def test_lease_settings() -> None:
    settings = _load(lease_heartbeat_seconds="0.5", lease_seconds="3")
    assert (settings.lease_heartbeat_seconds, settings.lease_seconds) == (0.5, 3.0)
    defaults = _load()
    assert (defaults.lease_heartbeat_seconds, defaults.lease_seconds) == (5.0, 30.0)
    with pytest.raises(SettingsError, match="lease_heartbeat_seconds"):
        _load(lease_heartbeat_seconds="0")
    with pytest.raises(SettingsError, match="lease_seconds"):
        _load(lease_heartbeat_seconds="5", lease_seconds="9")


def test_release_retry_setting() -> None:
    assert _load().release_retry_seconds == 5.0
    assert _load(release_retry_seconds="0.5").release_retry_seconds == 0.5
    for bad in ("0", "-1", "inf"):
        with pytest.raises(SettingsError, match="release_retry_seconds"):
            _load(release_retry_seconds=bad)
