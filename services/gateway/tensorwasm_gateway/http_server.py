"""A small HTTP/1.1 server on asyncio streams: what the HTTP face needs, nothing more.

Requests with a Content-Length body (capped), keep-alive, JSON or streamed responses
(a streamed response is sent without a length and ends the connection, as SSE does).
Chunked request bodies are refused (411): the face's clients send JSON documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

_log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 64 << 10
MAX_HEADERS = 100


@dataclass
class Request:
    """One parsed request."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # lower-case names, in order
    body: bytes
    peer: str

    def header(self, name: str) -> str | None:
        """The first value of a header, if present."""
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        """Every value of a header."""
        return [v for k, v in self.headers if k == name]


@dataclass
class Response:
    """A complete response, or a streamed one when `stream` is set."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    """A request the server itself refuses (malformed, too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def start_http_server(
    address: tuple[str, int], handler: Handler, *, max_body_bytes: int
) -> asyncio.Server:
    """Listens on `address` and serves each connection with `handler`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_info = writer.get_extra_info("peername")
        peer = str(peer_info[0]) if isinstance(peer_info, tuple) else ""
        try:
            while True:
                try:
                    request = await _read_request(reader, peer, max_body_bytes)
                except HttpError as exc:
                    body = f'{{"error":{{"kind":"bad_request","message":"{exc}"}}}}'.encode()
                    if exc.status == 413:
                        body = b'{"error":{"kind":"body_too_large","message":"body too large"}}'
                    await _write(writer, Response(exc.status, body, _JSON), keep_alive=False)
                    return
                if request is None:
                    return
                keep_alive = (request.header("connection") or "").lower() != "close"
                response = await handler(request)
                await _write(writer, response, keep_alive=keep_alive)
                if not keep_alive or response.stream is not None:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(serve, address[0], address[1], limit=MAX_HEADER_BYTES)


_JSON = [("content-type", "application/json")]


async def _read_request(
    reader: asyncio.StreamReader, peer: str, max_body_bytes: int
) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "incomplete request head") from None
        return None  # the client closed an idle keep-alive connection
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(505, "only HTTP/1.x is served")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    if len(headers) > MAX_HEADERS:
        raise HttpError(431, "too many headers")
    request = Request(method, target.split("?", 1)[0], headers, b"", peer)
    if request.header("transfer-encoding"):
        raise HttpError(411, "send the body with a Content-Length")
    lengths = request.header_values("content-length")
    if len(set(lengths)) > 1 or (lengths and not lengths[0].isdigit()):
        raise HttpError(400, "malformed Content-Length")
    length = int(lengths[0]) if lengths else 0
    if length > max_body_bytes:
        raise HttpError(413, "body too large")
    request.body = await reader.readexactly(length) if length else b""
    return request


async def _write(writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool) -> None:
    reason = HTTPStatus(response.status).phrase
    head = [f"HTTP/1.1 {response.status} {reason}"]
    head += [f"{name}: {value}" for name, value in response.headers]
    if response.stream is None:
        head.append(f"content-length: {len(response.body)}")
        head.append("connection: keep-alive" if keep_alive else "connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()
        return
    head += ["cache-control: no-cache", "connection: close"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    try:
        async for chunk in response.stream:
            writer.write(chunk)
            await writer.drain()
    finally:  # the client left early, or the stream ended: either way end its source
        close = getattr(response.stream, "aclose", None)
        if close is not None:
            await close()
