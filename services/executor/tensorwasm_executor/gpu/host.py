"""The GPU host modules of the executor's linker, and the GPU state of each new store.

`CudaHost` puts `wasi:cuda/host@0.2.0` (wasi_cuda.py) and `tensorwasm:gpu/host@0.1.0`
(extension.py, jit_ops.py) on the engine's linker, and gives each store that imports one of
them, or whose exports are auto-offloaded (offload.py), a session with the dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tensorwasm_common.errors import ServiceError
from tensorwasm_common.gpu_abi import EXT_MODULE, MODULE
from tensorwasm_common.offload_section import Declaration

from tensorwasm_executor.gpu import extension, offload, wasi_cuda
from tensorwasm_executor.gpu.batch import Transport
from tensorwasm_executor.gpu.cuda_session import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_COMMANDS,
    CudaSession,
)
from tensorwasm_executor.gpu.host_state import CudaHostState
from tensorwasm_executor.gpu.jit_ops import JitHost
from tensorwasm_executor.wasm.engine import CompiledModule
from tensorwasm_executor.wasm.host_modules import HostModule

_log = logging.getLogger(__name__)
# The import modules whose functions use a store's session.
GPU_MODULES = frozenset({MODULE, EXT_MODULE})


class CudaHost:
    """Makes the host module and, per store, the session of a module that imports it."""

    def __init__(
        self,
        transport_for: Callable[[str], Transport] | None,
        *,
        max_batch_commands: int = DEFAULT_MAX_BATCH_COMMANDS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        """Configures the sessions.

        Args:
            transport_for: A tenant's transport to the dispatcher; None when the executor
                has no dispatcher (every `wasi:cuda` call answers not_available).
            max_batch_commands: Launches queued before a batch is sent.
            max_batch_bytes: Staged bytes queued before a batch is sent.
        """
        self._transport_for = transport_for
        self._max_batch_commands = max_batch_commands
        self._max_batch_bytes = max_batch_bytes
        self.host_module = HostModule(MODULE, wasi_cuda.define)
        # The jit host that runs auto-offloaded exports (offload.py); None: they run wasm.
        self.offload_jit: JitHost | None = None
        # The extension module (extension.py); other files add functions to it with
        # `extension.define_function` and a HostModule of their own in `host_modules`.
        self.host_modules: list[HostModule] = [
            self.host_module,
            HostModule(EXT_MODULE, extension.define),
        ]

    def state_for(
        self,
        module: CompiledModule,
        tenant: str,
        offloads: Sequence[Declaration] = (),
    ) -> CudaHostState | None:
        """A new store's state: a session when the module imports `wasi:cuda` or has
        `offloads` (run on the GPU when `offload_jit` is set) and a dispatcher is
        configured, else None (the guest pays nothing for the GPU path).

        Call it on the thread that serves the request: the transport keeps its trace
        context, so the dispatcher's spans join the invocation's trace.

        Declarations that do not fit the module are logged and ignored (the wasm runs).
        """
        if self._transport_for is None:
            return None
        planned, jit = None, self.offload_jit
        if offloads and jit is not None and jit.client is not None:
            try:
                planned = offload.plan(module, offloads)
            except ServiceError as exc:  # the gateway checks them at deploy: not expected
                _log.warning("offload declarations ignored (the wasm runs): %s", exc)
        if not planned and not GPU_MODULES & module.imported_modules:
            return None
        session = CudaSession(
            self._transport_for(tenant),
            max_batch_commands=self._max_batch_commands,
            max_batch_bytes=self._max_batch_bytes,
        )
        state = (
            offload.OffloadingState(session, jit, planned)
            if planned and jit is not None
            else CudaHostState(session)
        )
        state.tenant = tenant
        return state
