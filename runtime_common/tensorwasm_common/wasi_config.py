"""The shape rules of a `WasiConfig` (argv, env, directory names), shared by the gateway
(checked at deploy) and the executor (checked again before a guest runs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Protocol

from tensorwasm_common.errors import InvalidWasiConfigError

MAX_ENTRIES = 1024
MAX_TOTAL_BYTES = 64 << 10
DEFAULT_GUEST_DIR = "/data"


class WasiConfigFields(Protocol):
    """The fields of a WASI configuration: the wire's `WasiConfig` or a service's own."""

    @property
    def argv(self) -> Sequence[str]:
        """The guest's argv."""
        ...

    @property
    def env(self) -> Mapping[str, str]:
        """The guest's environment."""
        ...

    @property
    def read_only_dir(self) -> str:
        """The directory granted read-only ("" for none)."""
        ...

    @property
    def guest_dir(self) -> str:
        """Where the guest sees that directory ("" for the default)."""
        ...


def _fail(field: str, message: str) -> InvalidWasiConfigError:
    return InvalidWasiConfigError(f"wasi.{field}: {message}", metadata={"field": f"wasi.{field}"})


def check_wasi_config(config: WasiConfigFields) -> None:
    """Raises InvalidWasiConfigError unless argv, env and the directory names are well formed.

    Rules: at most 1024 argv entries and 1024 variables, 64 KiB of argv and env in all,
    no NUL anywhere, variable names non-empty without '='; `read_only_dir` relative
    without '..'; `guest_dir` absolute. (Whether the directory is granted is the
    executor's decision.)
    """
    total = 0
    for field, values in (
        ("argv", list(config.argv)),
        ("env", [f"{k}={v}" for k, v in config.env.items()]),
    ):
        if len(values) > MAX_ENTRIES:
            raise _fail(field, f"at most {MAX_ENTRIES} entries")
        for value in values:
            if "\0" in value:
                raise _fail(field, "NUL bytes are not allowed")
            total += len(value.encode())
    for name in config.env:
        if not name or "=" in name:
            raise _fail("env", f"invalid variable name {name[:100]!r}")
    if total > MAX_TOTAL_BYTES:
        raise _fail("argv", f"argv and env exceed {MAX_TOTAL_BYTES} bytes")
    if config.read_only_dir:
        path = PurePosixPath(config.read_only_dir)
        if "\0" in config.read_only_dir or path.is_absolute() or ".." in path.parts:
            raise _fail("read_only_dir", "must be a relative path without '..'")
    guest = config.guest_dir
    if guest and ("\0" in guest or not PurePosixPath(guest).is_absolute()):
        raise _fail("guest_dir", "must be an absolute path")
