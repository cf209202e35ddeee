"""`tensorwasm deploy | list | get | delete`: the tenant's functions on the gateway."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb

from tensorwasm_client.cli.common import (
    EnvEntries,
    GuestDir,
    client_for,
    env_pairs,
    global_options,
    signature_text,
)
from tensorwasm_client.cli.output import show_record, show_rows
from tensorwasm_client.cli.progress import transfer_bar
from tensorwasm_client.client import TensorWasmError, invocation_limits
from tensorwasm_client.local_run import load_module_bytes
from tensorwasm_client.stack import LocalStack
from tensorwasm_client.uploads import module_size

DEFAULT_TENANT = "default"  # the gateway's tenant for a call that names none


def deploy(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the module, .wasm or .wat", metavar="FILE")],
    *,
    name: Annotated[
        str, typer.Option(help="function id (default: from the file name)", show_default=False)
    ] = "",
    env: EnvEntries = None,
    directory: Annotated[
        str,
        typer.Option("--dir", help="read-only directory, relative to the tenant's grant"),
    ] = "",
    guest_dir: GuestDir = "/data",
    timeout: Annotated[float, typer.Option(help="default guest deadline (s)")] = 0.0,
    fuel: Annotated[int, typer.Option(help="default instruction budget")] = 0,
    memory: Annotated[int, typer.Option(help="default linear-memory cap (bytes)")] = 0,
    argv: Annotated[
        list[str] | None,
        typer.Option(
            help="guest argument (repeat); argv[0] is the function's name, as a shell "
            "gives a program its own",
            metavar="ARG",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="delete a function of that name first, if any"),
    ] = False,
    init_export: Annotated[
        str,
        typer.Option(
            help="export () -> () run once at deploy; calls start from the state it leaves "
            "(default: wizer.initialize when exported)",
            show_default=False,
        ),
    ] = "",
    no_init: Annotated[
        bool, typer.Option("--no-init", help="do not pre-initialise with wizer.initialize")
    ] = False,
    offload: Annotated[
        bool,
        typer.Option(
            "--offload",
            help="run the exports declared in the module's tensorwasm.offload custom section "
            "as tensor ops on the GPU (checked at deploy)",
        ),
    ] = False,
    checkpoint_seconds: Annotated[
        int,
        typer.Option(
            "--checkpoint-seconds",
            min=0,
            max=86400,
            help="snapshot live instances at most this often while idle; an instance whose "
            "executor dies is restored from its last checkpoint (0: never)",
        ),
    ] = 0,
) -> int:
    """Deploy a .wasm or .wat file.

    Prints its name, digest, exports and offloads as JSON.
    """
    if init_export and no_init:
        raise typer.BadParameter("not allowed with --init-export", param_hint="'--no-init'")
    # A binary module streams from its file; a text one is assembled first.
    source = load_module_bytes(file) if file.suffix == ".wat" else file
    name = name or re.sub(r"[^a-z0-9-]+", "-", file.stem.lower()).strip("-")
    config = gateway_pb.FunctionConfig(
        wasi=invocation_pb2.WasiConfig(
            argv=[name, *(argv or [])],
            env=dict(env_pairs(env)),
            read_only_dir=directory,
            guest_dir=guest_dir if directory else "",
        ),
        default_limits=invocation_limits(timeout, fuel, memory),
        init_export=init_export,
        no_init=no_init,
        auto_offload=offload,
        checkpoint_seconds=checkpoint_seconds,
    )
    with client_for(ctx) as client:
        if replace:
            try:
                client.delete_function(name)
            except TensorWasmError as exc:
                if exc.code != "NOT_FOUND":
                    raise
        try:
            with transfer_bar("uploading", module_size(source)) as progress:
                function = client.upload_function(name, source, config, progress=progress)
        except TensorWasmError as exc:
            if exc.reason == "DIRECTORY_NOT_GRANTED":
                raise type(exc)(
                    exc.code,
                    exc.reason,
                    exc.message + _local_grant(ctx, directory),
                    exc.metadata,
                    domain=exc.domain,
                    request_id=exc.request_id,
                ) from None
            raise
    exports = {e.name: signature_text(e.signature) for e in function.exports}
    document = {
        "name": function.name,
        "module_digest": function.module_digest,
        "exports": exports,
        "init_export": function.config.init_export,
        "offloads": {o.export_name: o.op for o in function.config.offloads},
    }
    show_record(ctx, document, lambda: print(json.dumps(document)))
    return 0


def _local_grant(ctx: typer.Context, directory: str) -> str:
    """Where the grant lives when the gateway is the local stack's (else nothing)."""
    options = global_options(ctx)
    stack = LocalStack(options.data_dir).services()
    gateway = stack.get("gateway")
    if gateway is None or gateway.grpc_address.split(":")[-1] != options.gateway.split(":")[-1]:
        return ""
    tenant = options.tenant or DEFAULT_TENANT
    return f"; on this local stack: mkdir -p {options.data_dir / 'guest-dirs' / tenant / directory}"


def list_functions(ctx: typer.Context) -> int:
    """List the tenant's functions.

    One line each: name, digest prefix, size and exports.
    """
    with client_for(ctx) as client:
        functions = list(client.list_functions())

    def usual() -> None:
        for function in functions:
            exports = ", ".join(e.name for e in function.exports)
            size = f"{function.module_size_bytes} B"
            print(f"{function.name:<40} {function.module_digest[:16]}  {size:>12}  [{exports}]")

    rows = [
        {
            "name": f.name,
            "module_digest": f.module_digest,
            "module_size_bytes": f.module_size_bytes,
            "exports": [e.name for e in f.exports],
        }
        for f in functions
    ]
    show_rows(ctx, rows, ["name", "module_digest", "module_size_bytes", "exports"], usual)
    return 0


def get(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="function id", metavar="NAME")]
) -> int:
    """Show one function as indented JSON."""
    with client_for(ctx) as client:
        function = client.get_function(name)
    exports = {e.name: signature_text(e.signature) for e in function.exports}
    document = {
        "name": function.name,
        "tenant": function.tenant,
        "module_digest": function.module_digest,
        "module_size_bytes": function.module_size_bytes,
        "exports": exports,
    }
    show_record(ctx, document, lambda: print(json.dumps(document, indent=2)))
    return 0


def delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="function id", metavar="NAME")]
) -> int:
    """Delete a function."""
    with client_for(ctx) as client:
        client.delete_function(name)
    print(f"deleted {name}")
    return 0
