"""The PTX emitter core: kernel specs, cache keys, the emitter registry; never imports CUDA."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import blake3

from tensorwasm_jit.errors import InvalidArgumentError

# Bump whenever any emitter's output changes: it is part of every cache key.
EMITTER_VERSION = 3

# PTX ISA 7.8 (CUDA 11.8) is the oldest ISA that knows every target below (sm_89, sm_90).
PTX_ISA_VERSION = "7.8"

# sm_70 is emitted (a Volta driver JIT-compiles it) but CUDA 13's ptxas no longer assembles
# for sm_70: the tests assemble sm_70 modules for sm_75, the oldest target ptxas knows.
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
    """Renders one op's PTX entry point; instances are registered in `EMITTERS`.

    `param_names` are the parameters the op takes, `required_params` those it needs and
    `default_params` the values of the optional ones (filled in by `canonical_spec`, so a
    spec that spells a default out and one that leaves it out are one kernel).
    """

    op: ClassVar[str]
    dtypes: ClassVar[frozenset[str]]
    param_names: ClassVar[frozenset[str]] = frozenset()
    required_params: ClassVar[frozenset[str]] = frozenset()
    default_params: ClassVar[Mapping[str, int]] = {}

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

    def entry_name(self, spec: KernelSpec) -> str:
        """Returns the `.entry` name: `tw_<op>_<dtype>` then `_<name><value>` per parameter.

        The name encodes everything the kernel is specialised on, so a loaded module's
        entry alone says which kernel it is (the cpu backend relies on it).
        """
        suffix = "".join(f"_{name}{value}" for name, value in spec.params)
        return f"tw_{spec.op}_{spec.dtype}{suffix}"

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
class Element:
    """How one dtype is held in registers, loaded, stored and added."""

    size: int
    reg_type: str
    reg_prefix: str
    mem_type: str
    add: str


ELEMENTS: dict[str, Element] = {
    "f32": Element(size=4, reg_type=".f32", reg_prefix="%f", mem_type="f32", add="add.rn.f32"),
    "f16": Element(size=2, reg_type=".b16", reg_prefix="%h", mem_type="b16", add="add.rn.f16"),
}


def lines(*source: str) -> str:
    """Joins PTX lines; labels stay at column 0, everything else is indented."""
    out = []
    for line in source:
        if not line or line.endswith(":") or line in {"{", "}"}:
            out.append(line)
        else:
            out.append("    " + line)
    return "\n".join(out) + "\n"


# The first line of every emitted module: JSON naming the kernel (op, dtype, parameters,
# entry, emitter version). The dispatcher's cpu backend reads it to pick the NumPy
# implementation; it is a comment, so the PTX means the same to ptxas and the driver.
MARKER_PREFIX = "// tensorwasm-jit-kernel "


def marker(spec: KernelSpec, entry: str) -> str:
    """Returns the marker line (without newline) of an emitted module."""
    payload = {
        "op": spec.op,
        "dtype": spec.dtype,
        "params": dict(spec.params),
        "entry": entry,
        "emitter_version": EMITTER_VERSION,
    }
    return MARKER_PREFIX + json.dumps(payload, sort_keys=True, separators=(",", ":"))


def module_header(spec: KernelSpec, entry: str) -> str:
    """Returns the marker, a comment banner and the `.version`/`.target`/`.address_size`."""
    params = ",".join(f"{name}={value}" for name, value in spec.params) or "-"
    return (
        f"{marker(spec, entry)}\n"
        f"// Generated by TensorWasm jit (emitter version {EMITTER_VERSION})\n"
        f"// op={spec.op} dtype={spec.dtype} params={params}\n"
        "//\n\n"
        f".version {PTX_ISA_VERSION}\n"
        f".target {spec.target}\n"
        ".address_size 64\n\n"
    )


def check_range(spec: KernelSpec, name: str, low: int, high: int) -> int:
    """Returns parameter `name` of a spec, checked to lie in [low, high].

    Raises:
        InvalidArgumentError: It is outside the range.
    """
    value = dict(spec.params)[name]
    if not low <= value <= high:
        raise InvalidArgumentError(
            f"op {spec.op!r}: parameter {name}={value} is outside [{low}, {high}]",
            metadata={"field": f"params.{name}"},
        )
    return value
