"""`tensorwasm deploy | list | get | delete`: the tenant's functions on the gateway."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb

from tensorwasm_client.cli.common import add_wasi_flags, client_for, env_pairs, signature_text
from tensorwasm_client.client import invocation_limits
from tensorwasm_client.local_run import load_module_bytes


def add_parsers(commands: Any) -> None:
    """Adds `deploy`, `list`, `get` and `delete` to the CLI's subcommands."""
    deploy = commands.add_parser("deploy", help="deploy a .wasm or .wat file")
    deploy.add_argument("file", type=Path)
    deploy.add_argument("--name", help="function id (default: from the file name)")
    add_wasi_flags(deploy, directory_help="read-only directory, relative to the tenant's grant")
    deploy.add_argument("--timeout", type=float, default=0.0, help="default guest deadline (s)")
    deploy.add_argument("--fuel", type=int, default=0, help="default instruction budget")
    deploy.add_argument("--memory", type=int, default=0, help="default linear-memory cap (bytes)")
    deploy.add_argument("--argv", action="append", default=[], help="guest argv entry (repeat)")
    init = deploy.add_mutually_exclusive_group()
    init.add_argument(
        "--init-export",
        default="",
        help="export () -> () run once at deploy; calls start from the state it leaves "
        "(default: wizer.initialize when exported)",
    )
    init.add_argument(
        "--no-init", action="store_true", help="do not pre-initialise with wizer.initialize"
    )
    deploy.add_argument(
        "--offload",
        action="store_true",
        help="run the exports declared in the module's tensorwasm.offload custom section "
        "as tensor ops on the GPU (checked at deploy)",
    )
    commands.add_parser("list", help="list functions")
    get = commands.add_parser("get", help="show one function")
    get.add_argument("name")
    delete = commands.add_parser("delete", help="delete a function")
    delete.add_argument("name")


def deploy(args: argparse.Namespace) -> int:
    """Creates the function; prints its name, digest, exports and offloads as JSON."""
    source = load_module_bytes(args.file)
    name = args.name or re.sub(r"[^a-z0-9-]+", "-", args.file.stem.lower()).strip("-")
    config = gateway_pb.FunctionConfig(
        wasi=invocation_pb2.WasiConfig(
            argv=args.argv,
            env=dict(env_pairs(args.env)),
            read_only_dir=args.dir,
            guest_dir=args.guest_dir if args.dir else "",
        ),
        default_limits=invocation_limits(args.timeout, args.fuel, args.memory),
        init_export=args.init_export,
        no_init=args.no_init,
        auto_offload=args.offload,
    )
    with client_for(args) as client:
        function = client.create_function(name, source, config)
    exports = {e.name: signature_text(e.signature) for e in function.exports}
    print(
        json.dumps(
            {
                "name": function.name,
                "module_digest": function.module_digest,
                "exports": exports,
                "init_export": function.config.init_export,
                "offloads": {o.export_name: o.op for o in function.config.offloads},
            }
        )
    )
    return 0


def list_functions(args: argparse.Namespace) -> int:
    """Prints one line per function: name, digest prefix, size, exports."""
    with client_for(args) as client:
        for function in client.list_functions():
            exports = ", ".join(e.name for e in function.exports)
            size = f"{function.module_size_bytes} B"
            print(f"{function.name:<40} {function.module_digest[:16]}  {size:>12}  [{exports}]")
    return 0


def get(args: argparse.Namespace) -> int:
    """Prints one function as indented JSON."""
    with client_for(args) as client:
        function = client.get_function(args.name)
    exports = {e.name: signature_text(e.signature) for e in function.exports}
    print(
        json.dumps(
            {
                "name": function.name,
                "tenant": function.tenant,
                "module_digest": function.module_digest,
                "module_size_bytes": function.module_size_bytes,
                "exports": exports,
            },
            indent=2,
        )
    )
    return 0


def delete(args: argparse.Namespace) -> int:
    """Deletes one function."""
    with client_for(args) as client:
        client.delete_function(args.name)
    print(f"deleted {args.name}")
    return 0
