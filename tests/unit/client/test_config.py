"""Unit tests for the CLI's config file (tensorwasm_client.cli.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorwasm_client.cli.config import ConfigError, Profile, load_profile, resolve_options

CONFIG = """
profile = "prod"
gateway = "localhost:50051"
tenant = "dev"

[profiles.prod]
gateway = "gateway.example.com:443"
tenant = "acme"
token_file = "prod.token"
ca = "~/ca.pem"

[profiles.local]
token = "inline-token"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tensorwasm" / "config.toml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    (path.parent / "prod.token").write_text("  prod-token \n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("TENSORWASM_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return path


def test_the_file_s_default_profile_over_its_top_level_keys(config: Path) -> None:
    assert load_profile(None) == Profile(
        name="prod",
        gateway="gateway.example.com:443",
        tenant="acme",
        token="prod-token",  # read from the file next to the config, stripped
        ca_file=config.parent.parent / "home" / "ca.pem",
    )


def test_a_named_profile_inherits_the_top_level_keys(config: Path) -> None:
    local = load_profile("local")
    assert (local.gateway, local.tenant, local.token) == ("localhost:50051", "dev", "inline-token")


def test_what_the_user_gave_wins_over_the_profile(config: Path) -> None:
    given = {"gateway": "flag:1", "tenant": None, "token": None}
    resolved = resolve_options(given, {"gateway"}, None)
    assert (resolved["gateway"], resolved["tenant"], resolved["token"]) == (
        "flag:1",
        "acme",
        "prod-token",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('gatway = "x"\n', "unknown keys"),
        ("tenant = 3\n", "tenant must be a str"),
        ('profile = "missing"\n', "no profile 'missing'"),
        ("[profiles.a]\ntoken_file = 'absent.token'\n", "token_file"),
        ("gateway = \n", "config.toml"),
    ],
)
def test_a_malformed_file_is_refused_with_what_is_wrong(
    config: Path, text: str, message: str
) -> None:
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_profile("a" if "profiles.a" in text else None)


def test_no_file_is_no_settings_unless_a_profile_is_named(config: Path) -> None:
    config.unlink()
    assert load_profile(None) == Profile()
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile("prod")
