"""The global `--profile` and `--output` options, and the config file applied under the
flags: what the user typed (or set in the environment) wins over the profile."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

from tensorwasm_client.cli.config import ConfigError, config_path, resolve_options


class OutputFormat(enum.StrEnum):
    """`--output`: how records are printed."""

    JSON = "json"
    TABLE = "table"


ProfileOption = Annotated[
    str | None,
    typer.Option(
        envvar="TENSORWASM_PROFILE",
        help="profile of the config file ($XDG_CONFIG_HOME/tensorwasm/config.toml)",
        show_default=False,
    ),
]
OutputOption = Annotated[
    OutputFormat | None,
    typer.Option(
        "--output",
        "-o",
        help="print records as JSON or as a table (default: each command's usual form)",
        show_default=False,
    ),
]

# Where a value the user chose comes from (click's ParameterSource names).
_USER_SOURCES = {"COMMANDLINE", "ENVIRONMENT"}


def with_profile(ctx: typer.Context, profile: str | None, **given: Any) -> dict[str, Any]:
    """`given` (gateway, tenant, token as the flags left them) with the profile's values
    where the user gave none; plus the profile's CA, TLS and name."""
    from_user = set()
    for name in given:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in _USER_SOURCES:
            from_user.add(name)
    try:
        return resolve_options(given, from_user, profile)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--profile ({config_path()})") from None
