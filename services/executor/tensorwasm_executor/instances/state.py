"""The state of a live instance between calls, as an instance image: where it lives, capture.

wasmtime reaches an instance's state only through its exports, so a live instance of a
module that keeps a memory or global to itself runs on the module's *exposed* copy: the
pre-initialisation probe rewrite (`images/probes.py`), which adds an export for every
defined memory and global and changes nothing else (the function exports, which are all a
caller can reach, are the same). A snapshot then holds every defined memory (size and
bytes) and every mutable numeric global, in the pre-initialised image format
(`wasm/instance_image.py`, init export ""), and a restore is an instantiation of the same
copy with the image written over it. Tables are not captured: a restored instance has the
tables instantiation gives it. A mutable reference global cannot be captured
(INSTANCE_STATE_UNSUPPORTED).

An instance whose `wasi:cuda` session holds kernels or device buffers adds its device state
(`gpu/device_state.py`, the buffers' bytes copied back from the device); the payload is
then `b"TWSTATE\0"`, the image's length (u64 LE), the image, the device state. Without
device state it is the image alone.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from tensorwasm_executor.errors import ImageFormatError, InstanceStateUnsupportedError
from tensorwasm_executor.gpu.device_state import (
    DeviceState,
    decode_device_state,
    encode_device_state,
)
from tensorwasm_executor.images.probes import export_everything
from tensorwasm_executor.wasm.engine import CompiledModule
from tensorwasm_executor.wasm.instance_image import (
    NUMERIC_KINDS,
    GlobalImage,
    InstanceImage,
    MemoryImage,
    decode_image,
    encode_image,
    export_of,
    global_is_mutable,
    read_global,
    read_memory,
)

__all__ = [
    "Exposure", "StateLayout", "capture_state", "decode_state", "encode_state", "exposure_of",
    "state_layout",
]  # fmt: skip

STATE_MAGIC = b"TWSTATE\x00"
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class Exposure:
    """A module's defined memories and globals by the names its instances export them
    under, and the exposed copy's bytes when the module itself hides some (None: the
    module exports them all, its instances run on it as it is)."""

    memories: tuple[str, ...]
    globals: tuple[str, ...]
    exposed_wasm: bytes | None


@dataclass(frozen=True)
class StateLayout:
    """The exports that hold an instance's state: memories and mutable globals."""

    memories: tuple[str, ...]
    globals: tuple[str, ...]


def exposure_of(wasm: bytes) -> Exposure:
    """Where the state of `wasm`'s instances lives (parsing only; nothing is compiled).

    Raises:
        InvalidWasmError: the bytes are not a well-formed module binary.
    """
    probes = export_everything(wasm)
    everything = (*probes.memories, *probes.globals)
    hidden = any(probe.exported_as is None for probe in everything)
    return Exposure(
        tuple(p.probe_name for p in probes.memories),
        tuple(p.probe_name for p in probes.globals),
        probes.wasm if hidden else None,
    )


def state_layout(
    module: CompiledModule, exposure: Exposure, skip_globals: Iterable[str] = ()
) -> StateLayout:
    """The state exports of instances of `module` (the module, or its exposed copy)."""
    mutable = global_is_mutable(module.module, exposure.globals)
    skipped = set(skip_globals)
    return StateLayout(
        exposure.memories,
        tuple(name for name in exposure.globals if mutable.get(name) and name not in skipped),
    )


def capture_state(
    store: wasmtime.Store,
    instance: Any,
    layout: StateLayout,
    *,
    source_digest: str,
    engine_fingerprint: str,
) -> InstanceImage:
    """The instance's state now (the caller holds it between calls).

    Raises:
        InstanceStateUnsupportedError: a mutable global holds a reference.
    """
    memories = []
    for name in layout.memories:
        item = export_of(store, instance, name, ffi.WASMTIME_EXTERN_MEMORY)
        pages, data = read_memory(store, item)
        memories.append(MemoryImage(name, pages, data))
    globals_ = []
    for name in layout.globals:
        item = export_of(store, instance, name, ffi.WASMTIME_EXTERN_GLOBAL)
        kind, bits = read_global(store, item)
        if kind not in NUMERIC_KINDS:
            raise InstanceStateUnsupportedError(
                f"global {name!r} holds a reference, which a snapshot cannot carry",
                metadata={"kind": "global", "index": name[:64]},
            )
        globals_.append(GlobalImage(name, kind, bits))
    return InstanceImage(
        source_digest, engine_fingerprint, "", 0.0, tuple(memories), tuple(globals_)
    )


def encode_state(image: InstanceImage, device: DeviceState | None) -> bytes:
    """A snapshot's payload: the image, with the device state when there is one."""
    encoded = encode_image(image)
    if device is None:
        return encoded
    return STATE_MAGIC + _LENGTH.pack(len(encoded)) + encoded + encode_device_state(device)


def decode_state(payload: bytes) -> tuple[InstanceImage, DeviceState | None]:
    """The image and the device state (None: none) of a snapshot's payload.

    Raises:
        ImageFormatError: the payload is malformed.
    """
    if not payload.startswith(STATE_MAGIC):
        return decode_image(payload), None
    start = len(STATE_MAGIC) + _LENGTH.size
    if len(payload) < start:
        raise ImageFormatError("instance state is truncated")
    (length,) = _LENGTH.unpack_from(payload, len(STATE_MAGIC))
    if start + length > len(payload):
        raise ImageFormatError("instance state is truncated")
    image = decode_image(payload[start : start + length])
    return image, decode_device_state(payload[start + length :])
