"""PTX emitters for the known tensor ops: specs, cache keys and `emit`; never imports CUDA.

`core` holds the specs, keys and the emitter registry; `elementwise` and `blocked` the
ops; `emit` the public face re-exported here.
"""

from tensorwasm_jit.ptx.core import (
    EMITTER_VERSION,
    EMITTERS,
    MARKER_PREFIX,
    PTX_ISA_VERSION,
    SUPPORTED_DTYPES,
    SUPPORTED_TARGETS,
    EmittedKernel,
    KernelSpec,
    cache_key,
)
from tensorwasm_jit.ptx.emit import canonical_spec, emit

__all__ = [
    "EMITTERS",
    "EMITTER_VERSION",
    "MARKER_PREFIX",
    "PTX_ISA_VERSION",
    "SUPPORTED_DTYPES",
    "SUPPORTED_TARGETS",
    "EmittedKernel",
    "KernelSpec",
    "cache_key",
    "canonical_spec",
    "emit",
]
