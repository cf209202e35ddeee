"""`tensorwasm kernel publish | list | get | verify`: the gateway's signed kernel registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb

from tensorwasm_client.cli.common import client_for, global_options
from tensorwasm_client.kernels import Verdict, read_key_file, signed_manifest, verify

KernelRef = Annotated[str, typer.Argument(help="NAME@VERSION", metavar="NAME@VERSION")]
KeyFile = Annotated[
    Path, typer.Option("--key-file", help="the registry's HMAC key: a file of 64 hex digits")
]
EXIT_INVALID = 2  # verify: the kernel does not verify


def manifest_json(manifest: pb.KernelManifest) -> dict[str, Any]:
    """A manifest as the CLI prints it (digest and signature in hex)."""
    private = manifest.visibility == pb.KERNEL_VISIBILITY_PRIVATE
    return {
        "name": manifest.name,
        "version": manifest.version,
        "sm_version": manifest.sm_version,
        "digest": manifest.digest.hex(),
        "signature": manifest.signature.hex(),
        "key_id": manifest.key_id,
        "entry": manifest.entry,
        "visibility": "private" if private else "shared",
        "namespace": manifest.namespace,
        "publisher": manifest.publisher,
        "published": manifest.publish_time.ToJsonString(),
        "ptx_size_bytes": manifest.ptx_size_bytes,
    }


def split_ref(ref: str) -> tuple[str, str]:
    """NAME@VERSION -> (name, version); ValueError without exactly one '@'."""
    name, at, version = ref.partition("@")
    if not at or not name or not version or "@" in version:
        raise ValueError(f"{ref!r}: expected NAME@VERSION (e.g. matmul.f32@1.0.0)")
    return name, version


def publish(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="kernel name, e.g. matmul.f32")],
    version: Annotated[str, typer.Argument(help="SemVer version, e.g. 1.0.0")],
    *,
    ptx_file: Annotated[Path, typer.Option("--ptx-file", help="the PTX text")],
    sm: Annotated[int, typer.Option("--sm", help="target compute capability (80 for sm_80)")],
    key_file: KeyFile,
    entry: Annotated[
        str, typer.Option(help="the .entry to launch (default: the PTX's only one)")
    ] = "",
    private: Annotated[
        bool, typer.Option("--private", help="publish in the tenant's own namespace")
    ] = False,
) -> int:
    """Sign a PTX kernel with the registry's key and publish it as NAME@VERSION.

    Prints the stored manifest as JSON.
    """
    key = read_key_file(key_file)
    ptx = ptx_file.read_bytes()
    manifest = signed_manifest(key, name, version, sm, ptx, entry=entry, private=private)
    with client_for(ctx) as client:
        stored = client.publish_kernel(manifest, ptx.decode("utf-8"))
    print(json.dumps(manifest_json(stored), indent=2))
    return 0


def list_kernels(ctx: typer.Context) -> int:
    """List the kernels the tenant sees: the shared catalogue and its own."""
    with client_for(ctx) as client:
        manifests = list(client.list_kernels())
    if global_options(ctx).output == "json":
        print(json.dumps([manifest_json(m) for m in manifests], indent=2))
        return 0
    for manifest in manifests:
        where = manifest.namespace or "shared"
        ref = f"{manifest.name}@{manifest.version}"
        print(f"{ref:<48} sm_{manifest.sm_version:<5} {where:<20} {manifest.digest.hex()[:16]}")
    return 0


def get(
    ctx: typer.Context,
    ref: KernelRef,
    ptx_out: Annotated[
        Path | None, typer.Option("--ptx-out", help="write the PTX text to this file")
    ] = None,
) -> int:
    """Show a kernel's manifest as JSON (and write its PTX with --ptx-out)."""
    name, version = split_ref(ref)
    with client_for(ctx) as client:
        found = client.get_kernel(name, version)
    if ptx_out is not None:
        ptx_out.write_text(found.ptx_text, encoding="utf-8")
    print(json.dumps(manifest_json(found.manifest), indent=2))
    return 0


def verify_kernel(ctx: typer.Context, ref: KernelRef, key_file: KeyFile) -> int:
    """Fetch a kernel and check it: the PTX's digest, then the signature under the key.

    Exit code 0 when it verifies, 2 when it does not (the reason is printed).
    """
    name, version = split_ref(ref)
    key = read_key_file(key_file)
    with client_for(ctx) as client:
        found = client.get_kernel(name, version)
    verdict = verify(found.manifest, found.ptx_text.encode("utf-8"), key)
    if verdict is Verdict.VALID:
        print(f"{name}@{version}: valid (digest {found.manifest.digest.hex()[:16]}…)")
        return 0
    typer.echo(f"{name}@{version}: INVALID: {verdict.value}", err=True)
    return EXIT_INVALID
