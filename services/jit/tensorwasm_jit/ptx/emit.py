"""PTX text generation for the known tensor ops; pure Python, it never imports CUDA.

The public face of the emitters: `emit(spec)` validates a spec, fills in the op's default
parameters and renders its PTX module. The core (specs, keys, the registry) is in
`core`; the ops are in `elementwise` and `blocked`.
"""

from __future__ import annotations

import blake3

from tensorwasm_jit.errors import InvalidArgumentError, UnknownOpError, UnsupportedTargetError
from tensorwasm_jit.ptx import blocked, elementwise
from tensorwasm_jit.ptx.core import (
    EMITTERS,
    SUPPORTED_DTYPES,
    SUPPORTED_TARGETS,
    EmittedKernel,
    Emitter,
    KernelSpec,
    cache_key,
    module_header,
)

__all__ = ["canonical_spec", "emit"]


def _registered() -> dict[str, Emitter]:
    """The registry, filled on first use (importing this module registers nothing)."""
    if not EMITTERS:
        elementwise.register_all()
        blocked.register_all()
    return EMITTERS


def canonical_spec(spec: KernelSpec) -> KernelSpec:
    """Validates a spec and returns it with the op's default parameters filled in.

    Args:
        spec: The kernel spec as asked for.

    Returns:
        The spec the kernel is emitted (and cached) for.

    Raises:
        UnknownOpError: No emitter is registered for `spec.op`.
        UnsupportedTargetError: `spec.target` is not in `SUPPORTED_TARGETS`.
        InvalidArgumentError: The op lacks the dtype, or a parameter is unexpected,
            missing or out of range.
    """
    emitters = _registered()
    emitter = emitters.get(spec.op)
    if emitter is None:
        raise UnknownOpError(
            f"unknown op {spec.op!r}; known ops: {sorted(emitters)}", metadata={"op": spec.op}
        )
    if spec.target not in SUPPORTED_TARGETS:
        raise UnsupportedTargetError(
            f"unsupported target {spec.target!r}; supported: {list(SUPPORTED_TARGETS)}",
            metadata={"target": spec.target},
        )
    if spec.dtype not in SUPPORTED_DTYPES:
        raise InvalidArgumentError(
            f"unknown dtype {spec.dtype!r}; expected one of {list(SUPPORTED_DTYPES)}",
            metadata={"field": "dtype"},
        )
    full = KernelSpec(
        spec.op, {**emitter.default_params, **dict(spec.params)}, spec.dtype, spec.target
    )
    emitter.check(full)
    return full


def emit(spec: KernelSpec) -> EmittedKernel:
    """Generates the PTX module of a spec.

    Args:
        spec: The kernel spec (defaults may be left out).

    Returns:
        The kernel with the cache key of its canonical spec, the PTX text, the entry
        point name, the target and the BLAKE3 hex digest of the PTX text (UTF-8).

    Raises:
        UnknownOpError, UnsupportedTargetError, InvalidArgumentError: see `canonical_spec`.
    """
    full = canonical_spec(spec)
    emitter = EMITTERS[full.op]
    entry = emitter.entry_name(full)
    ptx = module_header(full, entry) + emitter.render(full)
    return EmittedKernel(
        cache_key=cache_key(full),
        ptx=ptx,
        entry=entry,
        target=full.target,
        ptx_digest=blake3.blake3(ptx.encode("utf-8")).hexdigest(),
    )
