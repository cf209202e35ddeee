"""The kernel registry's routes: `POST /kernels`, `GET /kernels?offset=&limit=`,
`GET /kernels/{name}/{version}`, and their JSON documents.

A manifest's `digest` and `signature` go out as arrays of 32 byte values (as the original
system wrote them) and are taken in either that form or as 64 hex digits.
"""

from __future__ import annotations

from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.errors import Reason

from tensorwasm_gateway.http.documents import json_object
from tensorwasm_gateway.http.errors import FaceError, json_response
from tensorwasm_gateway.http.routes import HttpFace

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
_MANIFEST_FIELDS = {
    "name", "version", "sm_version", "digest", "signature", "published_unix_ms", "publisher",
    "key_id", "entry", "visibility", "namespace", "ptx_size_bytes",
}  # fmt: skip
_VISIBILITY = {
    "shared": pb.KERNEL_VISIBILITY_SHARED,
    "private": pb.KERNEL_VISIBILITY_PRIVATE,
}


def manifest_json(manifest: pb.KernelManifest) -> dict[str, Any]:
    """A manifest as the HTTP API writes it."""
    private = manifest.visibility == pb.KERNEL_VISIBILITY_PRIVATE
    return {
        "name": manifest.name,
        "version": manifest.version,
        "sm_version": manifest.sm_version,
        "digest": list(manifest.digest),
        "signature": list(manifest.signature),
        "published_unix_ms": manifest.publish_time.ToMilliseconds(),
        "publisher": manifest.publisher,
        "key_id": manifest.key_id,
        "entry": manifest.entry,
        "visibility": "private" if private else "shared",
        "namespace": manifest.namespace,
        "ptx_size_bytes": manifest.ptx_size_bytes,
    }


def publish_request(body: bytes) -> pb.PublishKernelRequest:
    """The PublishKernel request of a `{"manifest": {...}, "ptx_text": "..."}` body."""
    document = json_object(body, {"manifest", "ptx_text"})
    manifest, ptx_text = document.get("manifest"), document.get("ptx_text")
    if not isinstance(manifest, dict) or not isinstance(ptx_text, str):
        raise _bad("manifest (an object) and ptx_text (a string) are required")
    unknown = sorted(set(manifest) - _MANIFEST_FIELDS)
    if unknown:
        raise _bad(f"unknown manifest fields {unknown}")
    name, version, sm_version = (manifest.get(k) for k in ("name", "version", "sm_version"))
    if not isinstance(name, str) or not isinstance(version, str):
        raise _bad("manifest.name and manifest.version must be strings")
    if not isinstance(sm_version, int) or isinstance(sm_version, bool) or sm_version < 0:
        raise _bad("manifest.sm_version must be a non-negative integer")
    visibility = manifest.get("visibility", "shared")
    if visibility not in _VISIBILITY:
        raise _bad("manifest.visibility must be shared or private")
    return pb.PublishKernelRequest(
        manifest=pb.KernelManifest(
            name=name,
            version=version,
            sm_version=min(sm_version, 0xFFFFFFFF),
            digest=_bytes32(manifest.get("digest"), "digest"),
            signature=_bytes32(manifest.get("signature"), "signature"),
            key_id=_text(manifest.get("key_id", ""), "key_id"),
            entry=_text(manifest.get("entry", ""), "entry"),
            visibility=_VISIBILITY[visibility],
        ),
        ptx_text=ptx_text,
    )


def page_bounds(request: Request) -> tuple[int, int]:
    """`offset` (default 0) and `limit` (default 100, clamped to 1..1000) of a list."""
    values = []
    for key, default in (("offset", 0), ("limit", DEFAULT_LIMIT)):
        raw = request.query_params.get(key, "")
        if raw and not raw.isdigit():
            raise _bad(f"{key} must be a non-negative integer")
        values.append(int(raw) if raw else default)
    offset, limit = values
    return min(offset, 2**31 - 1), max(1, min(limit, MAX_LIMIT))


class KernelRoutes:
    """The routes, calling PublishKernel, ListKernels and GetKernel through the face."""

    def __init__(self, face: HttpFace) -> None:
        """Args: face: the HttpFace (its stub, body reader and call options)."""
        self._face = face

    async def publish(self, request: Request) -> Response:
        face = self._face
        publish = publish_request(await face.read_body(request))
        reply = await face.stub.PublishKernel(publish, **face.call_options(request))
        return json_response(201, {"name": reply.manifest.name, "version": reply.manifest.version})

    async def list(self, request: Request) -> Response:
        face = self._face
        offset, limit = page_bounds(request)
        reply = await face.stub.ListKernels(
            pb.ListKernelsRequest(page_size=limit, offset=offset), **face.call_options(request)
        )
        manifests = [manifest_json(m) for m in reply.manifests]
        return json_response(200, {"manifests": manifests, "offset": offset, "limit": limit})

    async def get(self, request: Request) -> Response:
        face = self._face
        get = pb.GetKernelRequest(
            name=request.path_params["name"], version=request.path_params["version"]
        )
        reply = await face.stub.GetKernel(get, **face.call_options(request))
        return json_response(
            200, {"manifest": manifest_json(reply.manifest), "ptx_text": reply.ptx_text}
        )


def _bytes32(value: object, field: str) -> bytes:
    """32 bytes from an array of byte values or 64 hex digits (other lengths pass through
    for the registry to refuse as KERNEL_MANIFEST_INVALID)."""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise _bad(f"manifest.{field} is not hex") from None
    if isinstance(value, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value
    ):
        return bytes(value)
    raise _bad(f"manifest.{field} must be 32 byte values or 64 hex digits")


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"manifest.{field} must be a string")
    return value


def _bad(message: str) -> FaceError:
    return FaceError(_INVALID, Reason.INVALID_JSON, message)
