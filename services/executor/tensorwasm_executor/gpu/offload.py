"""Auto-offload: a call to an export declared as a known op runs on the GPU, not in wasm.

A function deployed with `auto_offload` carries its checked `tensorwasm.offload`
declarations (`tensorwasm_common.offload_section`) in every Invoke and CreateInstance request.
With a dispatcher and a jit cache, the store gets an `OffloadingState`: the sandbox calls
its `call_export` for every export, and a declared one runs the op exactly as the guest
API `tensorwasm:gpu/host@0.1.0` `matmul` does (kernel from the jit cache, loaded once
per store; dispatcher launch over the guest's pointers; C written into linear memory) and
returns what the export's convention says (nothing, or i32 0).

The wasm body is the fallback, never an error: it runs instead whenever the op cannot run
as declared -- a dimension outside [1, 2^15] (the loop of m, n or k = 0 writes nothing),
a matrix outside linear memory (the body traps as it would have), C overlapping A or B
(an in-place loop's result depends on its order), no kernel, the dispatcher unavailable,
or a failed launch. Nothing is written to memory before the results of a successful
launch, so a fallback starts from the memory the call found (A and B are only read).
Without a dispatcher or a jit cache no store gets this state and every export runs its
wasm body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import wasmtime
from tensorwasm_common import offload_section
from tensorwasm_common.gpu_abi import AbiFailure

from tensorwasm_executor.gpu.cuda_session import CudaSession
from tensorwasm_executor.gpu.host_state import CudaHostState, WasmMemory
from tensorwasm_executor.gpu.jit_ops import JitHost, matmul_records
from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.sandbox import CompiledModule
from tensorwasm_executor.wasm.values import ValueType, WasmValue

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Offload:
    """One offloaded export: its op, the parameter index of each op argument, and
    whether it returns an i32."""

    op: str
    order: tuple[int, ...]
    returns_i32: bool


def plan(
    module: CompiledModule, declared: Sequence[offload_section.Declaration]
) -> dict[str, Offload]:
    """The offloads of a call, checked again (as received) against the compiled module.

    Raises:
        OffloadDeclarationMalformedError, OffloadOpUnknownError,
        OffloadSignatureMismatchError: a declaration the gateway would have refused.
    """
    signatures = {
        info.name: ([t.value for t in info.params], [t.value for t in info.results])
        for info in module.exports
    }
    offloads = {}
    for wire in declared:
        item = offload_section.declaration(
            wire.export_name, {"op": wire.op, "args": list(wire.args)}
        )
        offload_section.check_signature(item, signatures)
        offloads[item.export_name] = Offload(
            item.op, item.order(), bool(signatures[item.export_name][1])
        )
    return offloads


def _overlaps(first: tuple[int, int], second: tuple[int, int]) -> bool:
    return first[0] < second[0] + second[1] and second[0] < first[0] + first[1]


def _i32(value: WasmValue) -> int:
    payload = value.payload
    assert isinstance(payload, int)  # the signature was checked: every argument an i32
    return payload


class OffloadingState(CudaHostState):
    """A store's `wasi:cuda` state that also runs its offloaded exports on the GPU."""

    def __init__(self, session: CudaSession, jit: JitHost, offloads: Mapping[str, Offload]):
        super().__init__(session)
        self._jit = jit
        self.offloads = offloads
        self.offloaded = 0  # calls that ran on the GPU
        self.fell_back = 0  # calls of an offloaded export that ran their wasm body

    def call_export(
        self,
        store: wasmtime.Store,
        instance: Any,
        export: str,
        results: Sequence[ValueType],
        args: Sequence[WasmValue],
    ) -> tuple[WasmValue, ...]:
        """What `rawcall.call` returns, computed on the GPU for an offloaded export."""
        spec = self.offloads.get(export)
        if spec is not None and self._run(spec, store, instance, args):
            self.offloaded += 1
            return (WasmValue.i32(0),) if spec.returns_i32 else ()
        if spec is not None:
            self.fell_back += 1
        return rawcall.call(store, instance, export, results, args)

    def _run(
        self, spec: Offload, store: wasmtime.Store, instance: Any, args: Sequence[WasmValue]
    ) -> bool:
        """Runs the op; False (nothing written) when the wasm body must run instead."""
        client = self._jit.client
        found = rawcall.export_memory(store, instance)
        if client is None or found is None:
            return False
        memory = WasmMemory(found, store)
        values = tuple(_i32(args[index]) for index in spec.order)
        try:
            a, b, c = ((r.offset, r.length) for r in matmul_records(memory, *values))
            if _overlaps(c, a) or _overlaps(c, b):
                return False
            code = self._jit.matmul(self, client, memory, *values)
        except AbiFailure as failure:
            _log.debug("offloaded %s falls back to wasm: %s", spec.op, failure)
            return False
        if code != 0:
            _log.info("offloaded %s falls back to wasm: code %d", spec.op, code)
            return False
        return True
