"""JIT kernels and one-call tensor ops for guests, in our import module `tensorwasm:gpu/host@0.1.0`.

Two raw core-wasm functions (all i32 unless said; codes are the `wasi:cuda` ABI's):

- `jit_kernel(op_ptr, op_len, params_ptr, params_len) -> i64`: a kernel id (>= 0) usable
  with `wasi_cuda_launch`, or a negative code. `op` is an op name of the jit cache
  (`vector_add`, `saxpy`, `relu`, `add`, `reduce_sum`, `matmul`, `conv2d`, ...) and
  `params` is ASCII `name=value` pairs separated by commas (`m=64,n=64,k=64`, and
  `dtype=f16` for a half-precision elementwise kernel; empty for none). Bad text -> -9.
- `matmul(a_ptr, b_ptr, c_ptr, m, n, k) -> i32`: `C[m x n] = A[m x k] @ B[k x n]`,
  row-major f32 in linear memory, computed by the dispatcher; 0 once C is written, or a
  negative code (-2 a matrix outside memory, -9 a dimension outside [1, 2^15]). It is a
  sync: launches queued before it run first.

Kernels come from the jit cache (`JitClient`, cached per executor) and are loaded into the
store's `wasi:cuda` session once per store (their ids are that session's). Without a jit
cache or a dispatcher every function answers not_available (-1).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import wasmtime
from opentelemetry import context as otel_context
from tensorwasm_common.gpu_abi import EXT_MODULE, AbiError, AbiFailure

from tensorwasm_executor.gpu.abi import PointerRecord, as_u32, check_region
from tensorwasm_executor.gpu.cuda_session import CudaSession
from tensorwasm_executor.gpu.host_state import CudaHostState, WasmMemory
from tensorwasm_executor.gpu.jit_client import JitClient
from tensorwasm_executor.wasm.sandbox import HostModule, current_host_state

MODULE = EXT_MODULE
MAX_OP_BYTES = 64
MAX_PARAMS_BYTES = 512
MAX_MATMUL_DIM = 1 << 15
MATMUL_TILE = 16
_log = logging.getLogger(__name__)

SpecKey = tuple[str, tuple[tuple[str, int], ...], str]


class JitHost:
    """Defines the module's functions; holds the jit client and each store's kernel ids."""

    def __init__(self, client: JitClient | None) -> None:
        """Args: client: the jit cache; None when the executor has none (-1 everywhere)."""
        self._client = client
        self._loaded: weakref.WeakKeyDictionary[CudaSession, dict[SpecKey, int]] = (
            weakref.WeakKeyDictionary()
        )
        self.host_module = HostModule(MODULE, self.define)

    def define(self, linker: wasmtime.Linker) -> None:
        """Defines `jit_kernel` and `matmul` on the engine's linker."""
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        functions: list[tuple[str, list[wasmtime.ValType], wasmtime.ValType, Callable[..., int]]]
        functions = [
            ("jit_kernel", [i32] * 4, i64, self._jit_kernel),
            ("matmul", [i32] * 6, i32, self._matmul),
        ]
        for name, params, result, body in functions:
            linker.define_func(
                MODULE,
                name,
                wasmtime.FuncType(params, [result]),
                self._guarded(name, body),
                access_caller=True,
            )

    def _guarded(self, name: str, body: Callable[..., int]) -> Callable[..., int]:
        """-1 without a session or jit cache; failures become their code and last_error."""

        def host_function(caller: wasmtime.Caller, *args: Any) -> int:
            state = current_host_state()
            if not isinstance(state, CudaHostState) or self._client is None:
                return int(AbiError.NOT_AVAILABLE)
            # the jit cache's spans join the invocation's trace (this is the guest's thread)
            token = otel_context.attach(state.trace_context)
            try:
                return body(state, self._client, caller, *args)
            except AbiFailure as failure:
                return state.session.fail(failure)
            except Exception:
                _log.exception("tensorwasm:gpu %s failed", name)
                return state.session.fail_internal(name)
            finally:
                otel_context.detach(token)

        host_function.__name__ = name
        return host_function

    def _kernel_id(
        self, state: CudaHostState, client: JitClient, memory: WasmMemory | None, key: SpecKey
    ) -> int:
        """The store's kernel id of a spec, emitting and loading it on first use."""
        loaded = self._loaded.setdefault(state.session, {})
        found = loaded.get(key)
        if found is not None:
            return found
        op, params, dtype = key
        timeout = state.session.remaining_seconds()
        kernel = client.kernel(op, dict(params), dtype, timeout)
        kernel_id = state.session.load_kernel(memory, kernel.ptx, kernel.entry)
        if kernel_id >= 0:
            loaded[key] = kernel_id
        return kernel_id

    def _jit_kernel(
        self, state: CudaHostState, client: JitClient, caller: wasmtime.Caller, *args: int
    ) -> int:
        op_ptr, op_len, params_ptr, params_len = args
        memory = state.memory(caller)
        if memory is None:
            raise AbiFailure(AbiError.INVALID_POINTER, "the module exports no `memory`")
        size = memory.size()
        if as_u32(op_len) > MAX_OP_BYTES or as_u32(params_len) > MAX_PARAMS_BYTES:
            raise AbiFailure(
                AbiError.INVALID_ARGS,
                f"op names are at most {MAX_OP_BYTES} bytes, params {MAX_PARAMS_BYTES}",
            )
        op_start, op_size = check_region(op_ptr, op_len, size, "the op name")
        params_start, params_size = check_region(params_ptr, params_len, size, "the params")
        op = _ascii(memory.read(op_start, op_size), "the op name")
        params, dtype = parse_params(_ascii(memory.read(params_start, params_size), "params"))
        return self._kernel_id(state, client, memory, (op, params, dtype))

    def _matmul(
        self, state: CudaHostState, client: JitClient, caller: wasmtime.Caller, *args: int
    ) -> int:
        return self.matmul(state, client, state.memory(caller), *args)

    @property
    def client(self) -> JitClient | None:
        """The jit cache (None: the executor has none)."""
        return self._client

    def matmul(
        self, state: CudaHostState, client: JitClient, memory: WasmMemory | None, *args: int
    ) -> int:
        """`matmul(a_ptr, b_ptr, c_ptr, m, n, k)` over `memory` (also run by auto-offload):
        0 once C is written, or a negative code.

        Raises:
            AbiFailure: -9 a dimension outside [1, 2^15]; -2 no memory or a matrix outside it.
        """
        records = matmul_records(memory, *args)
        assert memory is not None  # matmul_records raised otherwise
        m, n, k = (as_u32(value) for value in args[3:])
        params = (("k", k), ("m", m), ("n", n), ("tile", MATMUL_TILE))
        kernel_id = self._kernel_id(state, client, memory, ("matmul", params, "f32"))
        if kernel_id < 0:
            return kernel_id
        grid = (-(-n // MATMUL_TILE), -(-m // MATMUL_TILE), 1)
        code = state.session.launch_records(
            memory, kernel_id, grid=grid, block=(MATMUL_TILE, MATMUL_TILE, 1), records=records
        )
        if code != 0:
            return code
        return state.session.sync(memory)


def matmul_records(memory: WasmMemory | None, *args: int) -> tuple[PointerRecord, ...]:
    """The checked (start, size) regions of A, B and C of `matmul(a, b, c, m, n, k)`.

    Raises:
        AbiFailure: -9 a dimension outside [1, 2^15]; -2 no memory or a matrix outside it.
    """
    a_ptr, b_ptr, c_ptr, *dims = args
    m, n, k = (as_u32(value) for value in dims)
    if not all(1 <= value <= MAX_MATMUL_DIM for value in (m, n, k)):
        raise AbiFailure(AbiError.INVALID_ARGS, f"matmul({m}, {n}, {k}): each must be in [1, 2^15]")
    if memory is None:
        raise AbiFailure(AbiError.INVALID_POINTER, "the module exports no `memory`")
    size = memory.size()
    return tuple(
        PointerRecord(*check_region(pointer, 4 * count, size, name))
        for pointer, count, name in (
            (a_ptr, m * k, "A"),
            (b_ptr, k * n, "B"),
            (c_ptr, m * n, "C"),
        )
    )


def parse_params(text: str) -> tuple[tuple[tuple[str, int], ...], str]:
    """Parses `name=value,...` into sorted integer parameters and a dtype (default f32).

    Raises:
        AbiFailure: INVALID_ARGS for a pair without `=`, a repeated name, a value that is
            not a decimal integer, or a dtype other than f32/f16.
    """
    params: dict[str, int] = {}
    dtype = "f32"
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not name or name in params:
            raise AbiFailure(AbiError.INVALID_ARGS, f"params: bad or repeated pair {pair!r}")
        if name == "dtype":
            if value not in {"f32", "f16"}:
                raise AbiFailure(AbiError.INVALID_ARGS, f"params: dtype {value!r} (f32 or f16)")
            dtype = value
            continue
        try:
            params[name] = int(value, 10)
        except ValueError:
            raise AbiFailure(
                AbiError.INVALID_ARGS, f"params: {name}={value!r} is not an integer"
            ) from None
    return tuple(sorted(params.items())), dtype


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise AbiFailure(AbiError.INVALID_ARGS, f"{what} is not ASCII") from None
