"""Host import modules: their definition on the linker, and the per-store state of a call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import wasmtime


@dataclass(frozen=True)
class HostModule:
    """A host import module (e.g. `wasi:cuda/host@0.2.0`) and the function defining it."""

    name: str
    define: Callable[[wasmtime.Linker], None]


class HostState(Protocol):
    """Per-store state of host modules (e.g. a `wasi:cuda` session), owned by one store.

    Host functions are defined once on the engine's linker; while a call runs on a store,
    `current_host_state()` returns that store's state on the guest's thread.
    """

    def begin_call(self, deadline: float) -> None:
        """A call starts on the store; `deadline` is its end on `time.monotonic()`."""

    def end_call(self, store: wasmtime.Store, *, completed: bool, final: bool) -> None:
        """The call ended (`completed`: it returned); `final`: the store is discarded next."""

    def close(self) -> None:
        """The store is closed."""


# `state` is the HostState of the call running on this thread (set by `call_store.CallStore.run`).
CURRENT = threading.local()


def current_host_state() -> HostState | None:
    """The host state of the store whose call is running on this thread, if it has one."""
    state: HostState | None = getattr(CURRENT, "state", None)
    return state
