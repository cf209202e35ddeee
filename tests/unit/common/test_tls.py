"""TLS settings: every file checked at start, each refusal naming its setting."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from tensorwasm_client.local_certs import issue, make_authority, stack_tls_env
from tensorwasm_common.settings import ServerSettings, SettingsError, load_settings
from tensorwasm_common.tls import ClientTls, ServerTls, certificate_names


def _load(**env: str) -> ServerSettings:
    environ = {f"TENSORWASM_DEMO_{k.upper()}": v for k, v in env.items()}
    return load_settings(ServerSettings, "demo", environ=environ)


def test_a_good_pair_gives_server_and_client_tls(tmp_path: Path) -> None:
    ca = make_authority(tmp_path)
    pair = issue(ca, "demo", ["localhost", "127.0.0.1"], tmp_path)
    settings = _load(
        tls_cert_file=str(pair.cert_file),
        tls_key_file=str(pair.key_file),
        tls_client_ca_file=str(ca.cert_file),
        tls_ca_file=str(ca.cert_file),
    )
    assert settings.server_tls() == ServerTls(pair.cert_file, pair.key_file, ca.cert_file)
    assert settings.client_tls() == ClientTls(ca.cert_file, pair.cert_file, pair.key_file)
    assert certificate_names(pair.cert_file) == ["localhost", "127.0.0.1"]
    assert _load().server_tls() is None and _load().client_tls() is None


def test_bad_files_are_refused_naming_the_setting(tmp_path: Path) -> None:
    ca = make_authority(tmp_path)
    now = datetime.datetime.now(datetime.UTC)
    good = issue(ca, "good", ["localhost"], tmp_path)
    other = issue(ca, "other", ["localhost"], tmp_path)
    expired = issue(
        ca, "old", ["localhost"], tmp_path,
        not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(hours=1),
    )  # fmt: skip
    future = issue(ca, "new", ["localhost"], tmp_path, not_before=now + datetime.timedelta(days=1))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        ({"tls_cert_file": good.cert_file}, "tls_cert_file and tls_key_file: set both"),
        ({"tls_cert_file": tmp_path / "missing", "tls_key_file": good.key_file},
         "tls_cert_file: cannot read"),
        ({"tls_cert_file": garbage, "tls_key_file": good.key_file},
         "tls_cert_file: .*holds no PEM certificate"),
        ({"tls_cert_file": good.cert_file, "tls_key_file": other.key_file},
         "tls_key_file: the key in .* does not match"),
        ({"tls_cert_file": good.cert_file, "tls_key_file": garbage},
         "tls_key_file: .*no unencrypted PEM private key"),
        ({"tls_cert_file": expired.cert_file, "tls_key_file": expired.key_file},
         "tls_cert_file: the certificate CN=old .* expired"),
        ({"tls_cert_file": future.cert_file, "tls_key_file": future.key_file},
         "tls_cert_file: the certificate CN=new .* not valid before"),
        ({"tls_client_ca_file": ca.cert_file}, "tls_client_ca_file: requires tls_cert_file"),
        ({"tls_cert_file": good.cert_file, "tls_key_file": good.key_file,
          "tls_client_ca_file": garbage}, "tls_client_ca_file: .*holds no PEM"),
        ({"tls_ca_file": tmp_path / "missing"}, "tls_ca_file: cannot read"),
    ]  # fmt: skip
    for env, message in cases:
        with pytest.raises(SettingsError, match=f"^demo settings: {message}"):
            _load(**{key: str(value) for key, value in env.items()})


def test_the_fleet_ca_variable_is_every_services_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = make_authority(tmp_path)
    monkeypatch.setenv("TENSORWASM_TLS_CA_FILE", str(ca.cert_file))
    assert _load().tls_ca_file == ca.cert_file


def test_the_stack_environment_turns_on_mtls_for_each_service(tmp_path: Path) -> None:
    env = stack_tls_env(tmp_path, ["gateway", "executor"], "127.0.0.1")
    for service in ("gateway", "executor"):
        settings = load_settings(
            ServerSettings,
            service,
            environ={k: v for k, v in env.items() if k.startswith(f"TENSORWASM_{service.upper()}")},
        )
        tls = settings.server_tls()
        assert tls is not None and tls.client_ca_file == Path(env["TENSORWASM_TLS_CA_FILE"])
    assert (tmp_path / "client.pem").exists() and (
        tmp_path / "client.key"
    ).stat().st_mode & 0o077 == 0
