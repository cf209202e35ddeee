"""The CLI's config file: where the gateway is and as whom, with named profiles.

`$XDG_CONFIG_HOME/tensorwasm/config.toml` (`~/.config/tensorwasm/config.toml` without
XDG_CONFIG_HOME; `TENSORWASM_CONFIG` names another file):

    profile = "prod"                  # the profile used when none is named (optional)
    gateway = "localhost:50051"       # top-level keys: every profile's defaults
    tenant = "dev"

    [profiles.prod]
    gateway = "gateway.example.com:443"
    tenant = "acme"
    token_file = "~/.config/tensorwasm/prod.token"   # the bearer token, read at each run
    ca = "~/.config/tensorwasm/prod-ca.pem"          # TLS roots (implies TLS)
    tls = true                                        # TLS with the system roots

What is given on the command line or in the environment wins over the profile, which
wins over the top-level keys, which win over the built-in defaults. The profile is
`--profile`, else `TENSORWASM_PROFILE`, else the file's `profile`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_ENV = "TENSORWASM_CONFIG"
_KEYS = {"gateway", "tenant", "token", "token_file", "ca", "tls"}


class ConfigError(ValueError):
    """The config file is unreadable or malformed, or names a missing profile."""


@dataclass(frozen=True)
class Profile:
    """The connection settings a profile gives (None: not set there)."""

    name: str = ""
    gateway: str | None = None
    tenant: str | None = None
    token: str | None = None
    ca_file: Path | None = None
    tls: bool = False


def config_path() -> Path:
    """The config file's path (it may not exist)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tensorwasm" / "config.toml"


def load_profile(name: str | None, path: Path | None = None) -> Profile:
    """The settings of profile `name` (or the file's default one) merged over the file's
    top-level keys; an empty Profile when there is no file and no name."""
    path = path or config_path()
    if not path.exists():
        if name:
            raise ConfigError(f"profile {name!r} is named but {path} does not exist")
        return Profile()
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: [profiles] must be a table of tables")
    chosen = name or document.get("profile") or ""
    if not isinstance(chosen, str):
        raise ConfigError(f"{path}: profile must be a string")
    if chosen and chosen not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"{path}: no profile {chosen!r} (profiles: {known})")
    settings = {key: value for key, value in document.items() if key in _KEYS}
    unknown = set(document) - _KEYS - {"profile", "profiles"}
    if chosen:
        section = profiles[chosen]
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [profiles.{chosen}] must be a table")
        unknown |= set(section) - _KEYS
        settings.update(section)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    return _profile(chosen, settings, path)


def _profile(name: str, settings: dict[str, Any], path: Path) -> Profile:
    for key, value in settings.items():
        expected = bool if key == "tls" else str
        if not isinstance(value, expected):
            raise ConfigError(f"{path}: {key} must be a {expected.__name__}")
    token = settings.get("token")
    token_file = settings.get("token_file")
    if token_file:
        token_path = _relative(Path(token_file), path)
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: token_file: {exc}") from None
    ca = settings.get("ca")
    return Profile(
        name=name,
        gateway=settings.get("gateway"),
        tenant=settings.get("tenant"),
        token=token or None,
        ca_file=_relative(Path(ca), path) if ca else None,
        tls=bool(settings.get("tls", False)),
    )


def _relative(value: Path, config: Path) -> Path:
    """A path from the file: `~` expanded, relative ones from the file's directory."""
    value = value.expanduser()
    return value if value.is_absolute() else config.parent / value


def resolve_options(
    given: dict[str, Any], from_user: set[str], profile_name: str | None
) -> dict[str, Any]:
    """The connection options: those the user gave (flags or environment, named in
    `from_user`) over the profile's, over the given defaults."""
    profile = load_profile(profile_name)
    resolved = dict(given)
    for key, value in (
        ("gateway", profile.gateway),
        ("tenant", profile.tenant),
        ("token", profile.token),
    ):
        if key not in from_user and value is not None:
            resolved[key] = value
    resolved["ca_file"] = profile.ca_file
    resolved["tls"] = profile.tls
    resolved["profile"] = profile.name
    return resolved
