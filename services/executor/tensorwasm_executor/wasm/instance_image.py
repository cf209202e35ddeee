"""Pre-initialised instance images: the payload format, and reading/writing instance state.

An image is what a module's init export leaves behind: the bytes and size of each linear
memory and the value of each mutable global, addressed by the names the module exports
them under. A later instance is instantiated as usual and then has the image written into
it, so it starts where init ended without running init.

Payload format, version 1 (all integers little-endian):

    offset 0   8 bytes  magic b"TWIMAGE\\0"
    offset 8   u32      format version (1)
    offset 12  u32      header length H
    offset 16  H bytes  header: a UTF-8 JSON object
                        {"source_digest", "engine_fingerprint", "init_export",
                         "init_seconds", "memories": [{"export", "pages", "offset", "length"}],
                         "globals": [{"export", "kind", "bits"}]}
               ...      zero padding: every memory block starts on a 4096-byte boundary
               blocks   each memory's bytes (length = pages * 65536) at its offset

`kind` is wasmtime's value kind (0 i32, 1 i64, 2 f32, 3 f64, 4 v128) and `bits` the
value's little-endian bytes in hex (bit-exact: NaN payloads survive). The page alignment
lets a cached image be memory-mapped and copied into an instance without a parse of the
blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import mmap
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from tensorwasm_executor.errors import ImageFormatError
from tensorwasm_executor.wasm.rawcall import address_of

__all__ = [
    "FORMAT_VERSION", "MAGIC", "GlobalImage", "InstanceImage", "MemoryImage", "apply_image",
    "decode_image", "encode_image", "export_of", "read_global", "read_image_file",
    "read_memory", "write_global",
]  # fmt: skip

MAGIC = b"TWIMAGE\x00"
FORMAT_VERSION = 1
PAGE_BYTES = 65536
_ALIGN = 4096
_PREFIX = struct.Struct("<8sII")
# Value kinds an image can hold (wasmtime_valkind_t): i32, i64, f32, f64, v128.
NUMERIC_KINDS = frozenset({0, 1, 2, 3, 4})
_VALUE_BYTES = 16
_MAP_FIXED = 0x10  # Linux


@functools.cache
def _libc() -> Any:
    """libc's mmap (Linux only; None elsewhere), loaded on first use."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_long,
    ]  # fmt: skip
    return libc


_KIND_BYTES = {0: 4, 1: 8, 2: 4, 3: 8, 4: 16}


class ImageFile:
    """An open image file whose page-aligned blocks can be mapped into linear memory."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class MemoryImage:
    """One linear memory: the export that reaches it, its size in pages, its bytes, and
    (when loaded from a file) that file and the block's offset in it."""

    export: str
    pages: int
    data: bytes | memoryview
    source: tuple[ImageFile, int] | None = None


@dataclass(frozen=True)
class GlobalImage:
    """One mutable global: its export, wasmtime value kind and little-endian bits."""

    export: str
    kind: int
    bits: bytes


@dataclass(frozen=True, eq=False)
class InstanceImage:
    """The state init left in an instance of `source_digest`."""

    source_digest: str
    engine_fingerprint: str
    init_export: str
    init_seconds: float
    memories: tuple[MemoryImage, ...]
    globals: tuple[GlobalImage, ...]

    @property
    def memory_bytes(self) -> int:
        """The bytes of all memories together."""
        return sum(len(memory.data) for memory in self.memories)


def _align(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _layout(image: InstanceImage) -> tuple[bytes, list[int]]:
    """The encoded header and each memory block's offset."""
    offsets: list[int] = [0] * len(image.memories)
    for _ in range(2):  # the header's length depends on the offsets it lists: settle it
        header = json.dumps(
            {
                "source_digest": image.source_digest,
                "engine_fingerprint": image.engine_fingerprint,
                "init_export": image.init_export,
                "init_seconds": image.init_seconds,
                "memories": [
                    {"export": m.export, "pages": m.pages, "offset": o, "length": len(m.data)}
                    for m, o in zip(image.memories, offsets, strict=True)
                ],
                "globals": [
                    {"export": g.export, "kind": g.kind, "bits": g.bits.hex()}
                    for g in image.globals
                ],
            },
            separators=(",", ":"),
        ).encode()
        position = _align(_PREFIX.size + len(header) + 64)  # slack: offsets may grow
        for index, memory in enumerate(image.memories):
            offsets[index] = position
            position = _align(position + len(memory.data))
    return header, offsets


def encode_image(image: InstanceImage) -> bytes:
    """The image as a version-1 payload."""
    header, offsets = _layout(image)
    end = offsets[-1] + len(image.memories[-1].data) if image.memories else 0
    out = bytearray(max(end, _PREFIX.size + len(header)))
    _PREFIX.pack_into(out, 0, MAGIC, FORMAT_VERSION, len(header))
    out[_PREFIX.size : _PREFIX.size + len(header)] = header
    for memory, offset in zip(image.memories, offsets, strict=True):
        out[offset : offset + len(memory.data)] = memory.data
    return bytes(out)


def decode_image(buffer: bytes | memoryview, source: ImageFile | None = None) -> InstanceImage:
    """Parses a payload; memory blocks are views into `buffer` (no copy).

    Raises:
        ImageFormatError: bad magic, an unknown version, or a malformed header or block.
    """
    view = memoryview(buffer)
    if len(view) < _PREFIX.size:
        raise ImageFormatError("instance image is truncated")
    magic, version, header_length = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise ImageFormatError("not an instance image (bad magic)")
    if version != FORMAT_VERSION:
        raise ImageFormatError(
            f"instance image format version {version} is not supported (this executor reads "
            f"version {FORMAT_VERSION})",
            metadata={"format_version": str(version)},
        )
    try:
        header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + header_length]))
        memories = tuple(_memory(view, entry, source) for entry in header["memories"])
        globals_ = tuple(
            GlobalImage(str(g["export"]), int(g["kind"]), bytes.fromhex(g["bits"]))
            for g in header["globals"]
        )
        image = InstanceImage(
            str(header["source_digest"]),
            str(header["engine_fingerprint"]),
            str(header["init_export"]),
            float(header["init_seconds"]),
            memories,
            globals_,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageFormatError(f"instance image header is malformed: {exc}") from None
    for value in image.globals:
        if value.kind not in NUMERIC_KINDS or len(value.bits) != _VALUE_BYTES:
            raise ImageFormatError(f"instance image global {value.export!r} is malformed")
    return image


def _memory(view: memoryview, entry: dict[str, Any], source: ImageFile | None) -> MemoryImage:
    offset, length, pages = int(entry["offset"]), int(entry["length"]), int(entry["pages"])
    if offset < 0 or length != pages * PAGE_BYTES or offset + length > len(view):
        raise ImageFormatError(f"instance image memory {entry.get('export')!r} is out of bounds")
    located = (source, offset) if source is not None and offset % _ALIGN == 0 else None
    return MemoryImage(str(entry["export"]), pages, view[offset : offset + length], located)


def read_image_file(path: Path) -> InstanceImage:
    """Maps a cached payload file (copy-on-write, so blocks can be handed to ctypes) and
    decodes it. The mapping lives as long as the image's memory views do."""
    source = ImageFile(path)
    size = os.fstat(source.fd).st_size
    if size == 0:
        raise ImageFormatError("instance image file is empty")
    mapping = mmap.mmap(source.fd, size, access=mmap.ACCESS_COPY)
    return decode_image(memoryview(mapping), source)


# --- reading and writing an instance's state through its exports -------------------------------


def export_of(store: wasmtime.Store, instance: Any, name: str, kind: Any) -> Any:
    """The instance's export `name` as a raw extern of `kind` (a WASMTIME_EXTERN_* value).

    Raises:
        wasmtime.WasmtimeError: no export of that name and kind.
    """
    raw = name.encode("utf-8")
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance), ctypes.create_string_buffer(raw), len(raw),
        ctypes.byref(item),
    )  # fmt: skip
    if not found or int(item.kind) != kind.value:
        raise wasmtime.WasmtimeError(f"the instance has no such export {name!r}")
    return item


def read_memory(store: wasmtime.Store, memory: Any) -> tuple[int, bytes]:
    """(pages, a copy of the bytes) of a raw memory extern."""
    context = store._context()
    pages = int(ffi.wasmtime_memory_size(context, ctypes.byref(memory.of.memory)))
    size = int(ffi.wasmtime_memory_data_size(context, ctypes.byref(memory.of.memory)))
    pointer = ffi.wasmtime_memory_data(context, ctypes.byref(memory.of.memory))
    return pages, ctypes.string_at(pointer, size) if size else b""


def read_global(store: wasmtime.Store, global_: Any) -> tuple[int, bytes]:
    """(wasmtime value kind, 16 little-endian bytes) of a raw global extern, bit-exact."""
    value = ffi.wasmtime_val_t()
    ffi.wasmtime_global_get(store._context(), ctypes.byref(global_.of.global_), ctypes.byref(value))
    kind = int(value.kind)
    width = _KIND_BYTES.get(kind, _VALUE_BYTES)  # the union's unused bytes are zeroed
    bits = ctypes.string_at(ctypes.addressof(value.of), width)
    return kind, bits.ljust(_VALUE_BYTES, b"\0")


def write_global(store: wasmtime.Store, global_: Any, kind: int, bits: bytes) -> None:
    """Sets a raw global extern to a numeric value given as kind + bits."""
    value = ffi.wasmtime_val_t()
    value.kind = kind  # type: ignore[assignment]  # ctypes converts the int
    ctypes.memmove(ctypes.addressof(value.of), bits, _VALUE_BYTES)
    error = ffi.wasmtime_global_set(
        store._context(), ctypes.byref(global_.of.global_), ctypes.byref(value)
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def _map_private(pointer: Any, length: int, source: ImageFile, offset: int) -> bool:
    """Maps the file block copy-on-write over the memory's first `length` bytes (as
    wasmtime maps a module's data segments): pages are read lazily, writes stay private.
    False where that is not possible (then the bytes are copied)."""
    address = address_of(pointer)
    libc = _libc()
    if libc is None or address % mmap.PAGESIZE or offset % mmap.PAGESIZE:
        return False
    flags = mmap.MAP_PRIVATE | _MAP_FIXED
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    mapped = libc.mmap(address, length, prot, flags, source.fd, offset)
    return bool(mapped == address)


def _write_memory(
    store: wasmtime.Store,
    memory: Any,
    pages: int,
    data: bytes | memoryview,
    source: tuple[ImageFile, int] | None = None,
) -> None:
    context = store._context()
    handle = ctypes.byref(memory.of.memory)
    current = int(ffi.wasmtime_memory_size(context, handle))
    if current < pages:
        previous = ctypes.c_uint64()
        error = ffi.wasmtime_memory_grow(context, handle, pages - current, ctypes.byref(previous))
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    elif current > pages:
        raise wasmtime.WasmtimeError(
            f"the instance's memory has {current} pages before the image's {pages} are written"
        )
    if not data:
        return
    pointer = ffi.wasmtime_memory_data(context, handle)
    if source is not None and _map_private(pointer, len(data), *source):
        return
    if isinstance(data, memoryview) and data.readonly:  # a view of bytes: ctypes needs a copy
        data = data.tobytes()
    if isinstance(data, bytes):
        ctypes.memmove(pointer, data, len(data))
    else:
        ctypes.memmove(pointer, (ctypes.c_char * len(data)).from_buffer(data), len(data))


def apply_image(store: wasmtime.Store, instance: Any, image: InstanceImage) -> None:
    """Writes the image's memories and globals into a freshly instantiated instance.

    Raises:
        wasmtime.WasmtimeError: an export is missing, or a memory cannot grow to the
            image's size (e.g. the call's memory limit is lower).
    """
    for memory in image.memories:
        item = export_of(store, instance, memory.export, ffi.WASMTIME_EXTERN_MEMORY)
        _write_memory(store, item, memory.pages, memory.data, memory.source)
    for value in image.globals:
        item = export_of(store, instance, value.export, ffi.WASMTIME_EXTERN_GLOBAL)
        write_global(store, item, value.kind, value.bits)


def global_is_mutable(module: wasmtime.Module, names: Sequence[str]) -> dict[str, bool]:
    """Whether each named global export of `module` is mutable."""
    mutable = {}
    for export in module.exports:
        if export.name in names and isinstance(export.type, wasmtime.GlobalType):
            mutable[export.name] = bool(export.type.mutable)
    return mutable
