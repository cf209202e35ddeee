"""WASI configuration from the wire: argv and env checked, the read-only directory resolved.

A tenant may only be granted a directory under its own subtree of the executor's
guest-directory root (`<root>/<tenant>/<read_only_dir>`); symlinks are resolved before
the check, so a link cannot lead out of the subtree.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.tenants import TENANT_PATTERN
from tensorwasm_common.wasi_config import DEFAULT_GUEST_DIR, check_wasi_config

from tensorwasm_executor.errors import DirectoryNotGrantedError
from tensorwasm_executor.wasm.sandbox import NO_WASI_OPTIONS, WasiOptions


def wasi_from_wire(
    config: invocation_pb2.WasiConfig, *, tenant: str, guest_dirs_root: Path | None
) -> WasiOptions:
    """The sandbox's WasiOptions for a wire config, validated.

    Args:
        config: the request's WASI configuration.
        tenant: the tenant the guest runs for (selects its directory subtree).
        guest_dirs_root: the executor's guest-directory root; None: no grants at all.

    Raises:
        InvalidWasiConfigError: argv, env or a directory name is malformed.
        DirectoryNotGrantedError: the directory is outside the tenant's subtree, missing,
            or this executor grants no directories.
    """
    if not config.argv and not config.env and not config.read_only_dir:
        return NO_WASI_OPTIONS
    check_wasi_config(config)
    directory = None
    if config.read_only_dir:
        directory = str(_granted(config.read_only_dir, tenant, guest_dirs_root))
    return WasiOptions(
        tuple(config.argv),
        tuple(sorted(config.env.items())),
        directory,
        config.guest_dir or DEFAULT_GUEST_DIR,
    )


def _granted(relative: str, tenant: str, root: Path | None) -> Path:
    """Resolves `relative` inside `<root>/<tenant>`, refusing anything that escapes it."""
    meta = {"read_only_dir": relative}
    if root is None:
        raise DirectoryNotGrantedError(
            "this executor grants no directories (set TENSORWASM_EXECUTOR_GUEST_DIRS_ROOT)",
            metadata=meta,
        )
    if not TENANT_PATTERN.fullmatch(tenant):
        raise DirectoryNotGrantedError("the tenant id cannot name a directory", metadata=meta)
    path = PurePosixPath(relative)  # check_wasi_config made it relative, without '..'
    base = (root / tenant).resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base) or not target.is_dir():
        raise DirectoryNotGrantedError(
            f"{relative!r} is not a directory granted to tenant {tenant!r}: grants are the "
            f"directories under <TENSORWASM_EXECUTOR_GUEST_DIRS_ROOT>/{tenant}/ on the "
            "executor (the local stack's root is <data dir>/guest-dirs)",
            metadata=meta,
        )
    return target
