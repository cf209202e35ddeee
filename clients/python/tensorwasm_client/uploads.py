"""The messages of an UploadFunction stream: a header, the module in chunks, a trailer.

The module is read once, in chunks: its BLAKE3 digest is computed as the chunks go out
and sent in the trailer, so a large file is never held in memory whole by the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb

DEFAULT_CHUNK_BYTES = 1 << 20

# Called after each chunk with (bytes sent so far, total bytes).
Progress = Callable[[int, int], None]


def module_size(module: bytes | Path) -> int:
    """The module's size in bytes."""
    return len(module) if isinstance(module, bytes) else module.stat().st_size


def upload_messages(
    function_id: str,
    module: bytes | Path,
    config: pb.FunctionConfig | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
) -> Iterator[pb.UploadFunctionRequest]:
    """The stream for `module` (bytes, or a file read as it is sent)."""
    total = module_size(module)
    header = pb.UploadFunctionHeader(
        function_id=function_id, config=config, module_size_bytes=total
    )
    yield pb.UploadFunctionRequest(header=header)
    hasher = blake3.blake3()
    sent = 0
    for chunk in _chunks(module, chunk_bytes):
        hasher.update(chunk)
        yield pb.UploadFunctionRequest(chunk=chunk)
        sent += len(chunk)
        if progress is not None:
            progress(sent, total)
    trailer = pb.UploadFunctionTrailer(module_digest=hasher.hexdigest())
    yield pb.UploadFunctionRequest(trailer=trailer)


def _chunks(module: bytes | Path, chunk_bytes: int) -> Iterator[bytes]:
    if isinstance(module, bytes):
        view = memoryview(module)
        for start in range(0, len(module), chunk_bytes):
            yield bytes(view[start : start + chunk_bytes])
        return
    with module.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            yield chunk
