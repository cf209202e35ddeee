"""PTX text generation for the known tensor ops; pure Python, it never imports CUDA."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import blake3

from tensorwasm_jit.errors import InvalidArgumentError, UnknownOpError, UnsupportedTargetError

# Bump whenever any emitter's output changes: it is part of every cache key.
EMITTER_VERSION = 1

# PTX ISA 7.8 (CUDA 11.8) is the oldest ISA that knows every target below (sm_89, sm_90).
PTX_ISA_VERSION = "7.8"

SUPPORTED_TARGETS: tuple[str, ...] = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
SUPPORTED_DTYPES: tuple[str, ...] = ("f32", "f16")

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, init=False)
class KernelSpec:
    """What to emit: an op, its integer parameters, an element type and a GPU target.

    `params` is stored as a tuple of `(name, value)` pairs sorted by name, so that equal
    specs compare and hash equal whatever order the parameters were given in.
    """

    op: str
    params: tuple[tuple[str, int], ...]
    dtype: str
    target: str

    def __init__(
        self,
        op: str,
        params: Mapping[str, int] | Iterable[tuple[str, int]],
        dtype: str,
        target: str,
    ) -> None:
        """Builds a spec, canonicalising `params`.

        Args:
            op: The op name, e.g. "vector_add".
            params: The op's integer parameters, as a mapping or as `(name, value)` pairs.
            dtype: The element type, "f32" or "f16".
            target: The GPU target, e.g. "sm_80".

        Raises:
            InvalidArgumentError: A parameter name is not an identifier, is repeated, or its
                value is not an int.
        """
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        seen: dict[str, int] = {}
        for name, value in pairs:
            if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
                raise InvalidArgumentError(
                    f"parameter name {name!r} is not an identifier",
                    metadata={"field": "params"},
                )
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgumentError(
                    f"parameter {name!r} must be an integer, got {type(value).__name__}",
                    metadata={"field": f"params.{name}"},
                )
            if name in seen:
                raise InvalidArgumentError(
                    f"parameter {name!r} is given twice", metadata={"field": f"params.{name}"}
                )
            seen[name] = value
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "params", tuple(sorted(seen.items())))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "target", target)

    @property
    def params_dict(self) -> dict[str, int]:
        """The parameters as a fresh dict."""
        return dict(self.params)


@dataclass(frozen=True)
class EmittedKernel:
    """A generated kernel: its cache key, PTX text, entry point, target and PTX digest."""

    cache_key: str
    ptx: str
    entry: str
    target: str
    ptx_digest: str


def cache_key(spec: KernelSpec) -> str:
    """Returns the cache key of a spec.

    The key is the BLAKE3 hex digest of canonical JSON (sorted keys, no whitespace) of the
    op, the sorted parameters, the dtype, the target and `EMITTER_VERSION`. It does not
    validate the spec.

    Args:
        spec: The kernel spec.

    Returns:
        64 lowercase hex characters.
    """
    payload = {
        "op": spec.op,
        "params": [[name, value] for name, value in spec.params],
        "dtype": spec.dtype,
        "target": spec.target,
        "emitter_version": EMITTER_VERSION,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return blake3.blake3(canonical.encode("ascii")).hexdigest()


class Emitter(abc.ABC):
    """Renders one op's PTX entry point; instances are registered in `EMITTERS`."""

    op: ClassVar[str]
    dtypes: ClassVar[frozenset[str]]
    param_names: ClassVar[frozenset[str]] = frozenset()
    required_params: ClassVar[frozenset[str]] = frozenset()

    def check(self, spec: KernelSpec) -> None:
        """Rejects a dtype the op lacks and parameters it does not take or misses.

        Subclasses that constrain parameter values extend this.

        Args:
            spec: A spec whose op and target are already known to be supported.

        Raises:
            InvalidArgumentError: The dtype or a parameter is not acceptable.
        """
        if spec.dtype not in self.dtypes:
            raise InvalidArgumentError(
                f"op {self.op!r} has no dtype {spec.dtype!r}; expected one of "
                f"{sorted(self.dtypes)}",
                metadata={"field": "dtype"},
            )
        names = {name for name, _ in spec.params}
        unexpected = sorted(names - self.param_names)
        if unexpected:
            raise InvalidArgumentError(
                f"op {self.op!r} takes no parameter {unexpected[0]!r}; expected "
                f"{sorted(self.param_names) or 'none'}",
                metadata={"field": f"params.{unexpected[0]}"},
            )
        missing = sorted(self.required_params - names)
        if missing:
            raise InvalidArgumentError(
                f"op {self.op!r} needs parameter {missing[0]!r}",
                metadata={"field": f"params.{missing[0]}"},
            )

    @abc.abstractmethod
    def entry_name(self, spec: KernelSpec) -> str:
        """Returns the name of the `.entry` the rendered PTX declares."""

    @abc.abstractmethod
    def render(self, spec: KernelSpec) -> str:
        """Returns the `.entry` directive with its body for a checked spec."""


EMITTERS: dict[str, Emitter] = {}


def register(emitter: Emitter) -> Emitter:
    """Adds an emitter to `EMITTERS` under its op.

    Args:
        emitter: The emitter.

    Returns:
        The emitter, so that this can be used at module level on an instance.

    Raises:
        ValueError: An emitter for the op is registered already.
    """
    if emitter.op in EMITTERS:
        raise ValueError(f"an emitter for op {emitter.op!r} is registered already")
    EMITTERS[emitter.op] = emitter
    return emitter


@dataclass(frozen=True)
class _Element:
    """How one dtype is held in registers, loaded, stored and added."""

    size: int
    reg_type: str
    reg_prefix: str
    mem_type: str
    add: str


_ELEMENTS: dict[str, _Element] = {
    "f32": _Element(size=4, reg_type=".f32", reg_prefix="%f", mem_type="f32", add="add.rn.f32"),
    "f16": _Element(size=2, reg_type=".b16", reg_prefix="%h", mem_type="b16", add="add.rn.f16"),
}


def _lines(*lines: str) -> str:
    """Joins PTX lines; labels stay at column 0, everything else is indented."""
    out = []
    for line in lines:
        if not line or line.endswith(":") or line in {"{", "}"}:
            out.append(line)
        else:
            out.append("    " + line)
    return "\n".join(out) + "\n"


class VectorAddEmitter(Emitter):
    """`c[i] = a[i] + b[i]` for `i = blockIdx.x * blockDim.x + threadIdx.x < n`.

    Signature as the original kernel: `(const T* a, const T* b, T* c, unsigned int n)`.
    """

    op: ClassVar[str] = "vector_add"
    dtypes: ClassVar[frozenset[str]] = frozenset({"f32", "f16"})

    def entry_name(self, spec: KernelSpec) -> str:
        """Returns "vector_add" for every dtype (each kernel is a module of its own)."""
        return "vector_add"

    def render(self, spec: KernelSpec) -> str:
        """Returns the bounds-checked element-wise add."""
        el = _ELEMENTS[spec.dtype]
        v = el.reg_prefix
        header = (
            f".visible .entry {self.entry_name(spec)}(\n"
            "    .param .u64 a,\n"
            "    .param .u64 b,\n"
            "    .param .u64 c,\n"
            "    .param .u32 n\n"
            ")\n"
        )
        body = _lines(
            "{",
            ".reg .pred %p<2>;",
            ".reg .b32 %r<6>;",
            ".reg .b64 %rd<11>;",
            f".reg {el.reg_type} {v}<4>;",
            "",
            "ld.param.u32 %r1, [n];",
            "mov.u32 %r2, %ctaid.x;",
            "mov.u32 %r3, %ntid.x;",
            "mov.u32 %r4, %tid.x;",
            "mad.lo.u32 %r5, %r2, %r3, %r4;",
            "setp.ge.u32 %p1, %r5, %r1;",
            "@%p1 bra $L__exit;",
            "ld.param.u64 %rd1, [a];",
            "ld.param.u64 %rd2, [b];",
            "ld.param.u64 %rd3, [c];",
            "cvta.to.global.u64 %rd4, %rd1;",
            "cvta.to.global.u64 %rd5, %rd2;",
            "cvta.to.global.u64 %rd6, %rd3;",
            f"mul.wide.u32 %rd7, %r5, {el.size};",
            "add.s64 %rd8, %rd4, %rd7;",
            "add.s64 %rd9, %rd5, %rd7;",
            "add.s64 %rd10, %rd6, %rd7;",
            f"ld.global.{el.mem_type} {v}1, [%rd8];",
            f"ld.global.{el.mem_type} {v}2, [%rd9];",
            f"{el.add} {v}3, {v}1, {v}2;",
            f"st.global.{el.mem_type} [%rd10], {v}3;",
            "$L__exit:",
            "ret;",
            "}",
        )
        return header + body


register(VectorAddEmitter())


def _module_header(spec: KernelSpec) -> str:
    """Returns the comment banner and the `.version`/`.target`/`.address_size` directives."""
    params = ",".join(f"{name}={value}" for name, value in spec.params) or "-"
    return (
        "//\n"
        f"// Generated by TensorWasm jit (emitter version {EMITTER_VERSION})\n"
        f"// op={spec.op} dtype={spec.dtype} params={params}\n"
        "//\n\n"
        f".version {PTX_ISA_VERSION}\n"
        f".target {spec.target}\n"
        ".address_size 64\n\n"
    )


def emit(spec: KernelSpec) -> EmittedKernel:
    """Generates the PTX module of a spec.

    Args:
        spec: The kernel spec.

    Returns:
        The kernel with its cache key, PTX text, entry point name, target and the BLAKE3
        hex digest of the PTX text (UTF-8).

    Raises:
        UnknownOpError: No emitter is registered for `spec.op`.
        UnsupportedTargetError: `spec.target` is not in `SUPPORTED_TARGETS`.
        InvalidArgumentError: The op lacks the dtype, or a parameter is unexpected or missing.
    """
    emitter = EMITTERS.get(spec.op)
    if emitter is None:
        raise UnknownOpError(
            f"unknown op {spec.op!r}; known ops: {sorted(EMITTERS)}", metadata={"op": spec.op}
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
    emitter.check(spec)
    ptx = _module_header(spec) + emitter.render(spec)
    return EmittedKernel(
        cache_key=cache_key(spec),
        ptx=ptx,
        entry=emitter.entry_name(spec),
        target=spec.target,
        ptx_digest=blake3.blake3(ptx.encode("utf-8")).hexdigest(),
    )
