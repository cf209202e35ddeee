"""The `tensorwasm` command tree: global options, and each command bound once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from tensorwasm_client.cli import (
    bench,
    completions,
    functions,
    instance_snapshots,
    instances,
    invocations,
    kernels,
    local_stack,
    metrics,
    observe,
    run,
    snapshots,
)
from tensorwasm_client.cli.common import GlobalOptions, exit_code
from tensorwasm_client.cli.profiles import OutputOption, ProfileOption, with_profile
from tensorwasm_client.client import DEFAULT_GATEWAY, TlsOptions
from tensorwasm_client.stack import default_data_dir

__all__ = ["app", "run_app"]


def _group(help_text: str) -> typer.Typer:
    # Plain (click) help and errors: the output stays greppable and unboxed.
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
    )


def _bind(group: typer.Typer, name: str, command: Callable[..., int]) -> None:
    """Registers `command` (which returns its exit code) under `name`."""
    group.command(name)(exit_code(command))


def _version(value: bool) -> None:
    """`--version`: the CLI's version and the wasmtime-py that `run` uses."""
    if value:
        import importlib.metadata

        try:
            engine = f" (wasmtime-py {importlib.metadata.version('wasmtime')})"
        except importlib.metadata.PackageNotFoundError:
            engine = ""
        print(f"tensorwasm {importlib.metadata.version('tensorwasm-client')}{engine}")
        raise typer.Exit()


def _global_options(
    ctx: typer.Context,
    *,
    gateway: Annotated[
        str, typer.Option(envvar="TENSORWASM_GATEWAY", help="gateway address")
    ] = DEFAULT_GATEWAY,
    tenant: Annotated[
        str | None,
        typer.Option(envvar="TENSORWASM_TENANT", help="tenant", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="TENSORWASM_TOKEN",
            help="bearer token for the gateway (prefer the env var)",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="TENSORWASM_DATA_DIR",
            help="local stack state",
            show_default="$XDG_DATA_HOME/tensorwasm or ~/.local/share/tensorwasm",
        ),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", envvar="TENSORWASM_TLS", help="connect to the gateway over TLS")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="TENSORWASM_CA_FILE",
            help="CA that signed the gateway's certificate (implies --tls)",
            show_default="the system's roots",
        ),
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(help="client certificate for mTLS (with --key; implies --tls)"),
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="the client certificate's private key", show_default=False)
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", is_eager=True, callback=_version
        ),
    ] = False,
    profile: ProfileOption = None,
    output: OutputOption = None,
) -> None:
    """The `tensorwasm` command: run the local stack, deploy and invoke functions."""
    connection = with_profile(ctx, profile, gateway=gateway, tenant=tenant, token=token)
    # TLS from the flags, else from the profile (its CA, or `tls = true`).
    profile_ca, profile_tls = connection.pop("ca_file"), connection.pop("tls")
    ca = ca_file if ca_file is not None else profile_ca
    wants_tls = tls or bool(profile_tls) or ca is not None
    tls_options = None
    if wants_tls or cert is not None or key is not None:
        try:
            tls_options = TlsOptions(ca, cert, key)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    ctx.obj = GlobalOptions(
        data_dir=data_dir or default_data_dir(),
        output=output.value if output else "",
        tls=tls_options,
        **connection,
    )


app = _group(_global_options.__doc__ or "")
app.callback()(_global_options)

_bind(app, "up", local_stack.up)
_bind(app, "down", local_stack.down)
_bind(app, "status", local_stack.status)
_bind(app, "restart", local_stack.restart)
_bind(app, "deploy", functions.deploy)
_bind(app, "list", functions.list_functions)
_bind(app, "get", functions.get)
_bind(app, "delete", functions.delete)
_bind(app, "invoke", invocations.invoke)
_bind(app, "run", run.run)
_bind(app, "bench", bench.bench)
_bind(app, "metrics", metrics.metrics)
_bind(app, "observe", observe.observe)
_bind(app, "completions", completions.completions)

_invocation = _group("Async invocations.")
_bind(_invocation, "get", invocations.get_invocation)
_bind(_invocation, "list", invocations.list_invocations)
app.add_typer(_invocation, name="invocation")

_instance = _group("Live (stateful) instances.")
_bind(_instance, "create", instances.create)
_bind(_instance, "list", instances.list_instances)
_bind(_instance, "get", instances.get)
_bind(_instance, "call", instances.call)
_bind(_instance, "delete", instances.delete)
app.add_typer(_instance, name="instance")

_snapshot = _group(snapshots.store_options.__doc__ or "")
_snapshot.callback()(snapshots.store_options)
_bind(_snapshot, "ls", snapshots.ls)
_bind(_snapshot, "get", snapshots.get)
_bind(_snapshot, "rm", snapshots.rm)
_bind(_snapshot, "verify", snapshots.verify)
_bind(_snapshot, "save", instance_snapshots.save)
_bind(_snapshot, "restore", instance_snapshots.restore)
app.add_typer(_snapshot, name="snapshot")

_kernel = _group("The signed kernel registry (PTX by NAME@VERSION).")
_bind(_kernel, "publish", kernels.publish)
_bind(_kernel, "list", kernels.list_kernels)
_bind(_kernel, "get", kernels.get)
_bind(_kernel, "verify", kernels.verify_kernel)
app.add_typer(_kernel, name="kernel")


def run_app(args: list[str]) -> None:
    """Runs the whole command tree on `args` (global options already in front)."""
    app(args=args, prog_name="tensorwasm")
