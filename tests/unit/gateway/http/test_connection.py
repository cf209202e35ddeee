"""Unit tests for tensorwasm_gateway.http.connection, on raw sockets: deadlines, the
connection cap, and malformed heads answered with the JSON envelope (never dropped)."""

from __future__ import annotations

import json
import time

import pytest

from tests.unit.gateway.http.conftest import LIMITS, Face, read_until_closed


def status_and_error(reply: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    error = json.loads(body)["error"]
    assert b"content-type: application/json" in head.lower()
    return status, error


def test_a_partial_request_head_is_answered_408_and_closed(face: Face) -> None:
    """A slowloris client: the old server waited for the head's end forever."""
    with face.raw() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        status, error = status_and_error(read_until_closed(sock))
    assert (status, error["kind"]) == (408, "request_timeout")


def test_a_trickled_request_head_is_still_bounded(face: Face) -> None:
    """Bytes arriving now and then do not extend the head's deadline."""
    with face.raw() as sock:
        sock.settimeout(LIMITS.read_timeout_seconds / 4)
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nx-long: " + b"a" * 1000:
            try:
                sock.sendall(bytes([byte]))
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            assert status_and_error(reply)[0] == 408
            closed = True
            break
    assert closed


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(face: Face) -> None:
    with face.raw() as sock:
        assert read_until_closed(sock) == b""


def test_a_stalled_body_is_answered_408(face: Face) -> None:
    with face.raw() as sock:
        sock.sendall(b"POST /functions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        status, error = status_and_error(read_until_closed(sock))
    assert (status, error["kind"]) == (408, "request_timeout")


def test_connections_past_the_cap_are_answered_503_and_closed(face: Face) -> None:
    held = [face.raw() for _ in range(LIMITS.max_connections)]
    try:
        for sock in held:  # every held connection is accepted before the next one
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with face.raw() as extra:
            status, error = status_and_error(read_until_closed(extra))
        assert (status, error["kind"]) == (503, "unavailable")
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30
    while face.request("GET", "/healthz")[0] != 200:  # freed as the server sees them close
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    "header",
    [
        b"authorization: Bearer caf\xe9",
        b"x-tensorwasm-tenant: t\x80",
        b"x-tensorwasm-tenant: a\rb",
        b"authorization: Bearer a\rb",
    ],
)
def test_unforwardable_header_values_are_400_json(face: Face, header: bytes) -> None:
    """A non-ASCII byte or a bare CR in a header the face forwards as gRPC metadata: the
    old server failed building the metadata and dropped the connection."""
    with face.raw() as sock:
        sock.sendall(
            b"POST /functions/add/invoke HTTP/1.1\r\nhost: x\r\n"
            + header
            + b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        )
        status, error = status_and_error(read_until_closed(sock))
    assert (status, error["kind"]) == (400, "bad_request")
    assert face.gateway.metadata == []  # nothing reached the gRPC API


def test_a_malformed_head_is_400_json(face: Face) -> None:
    with face.raw() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n")
        status, error = status_and_error(read_until_closed(sock))
    assert (status, error["kind"]) == (400, "bad_request")


def test_keep_alive_serves_several_requests(face: Face) -> None:
    connection = face.connection()
    for _ in range(3):
        connection.request("GET", "/healthz")
        reply = connection.getresponse()
        assert (reply.status, reply.read()) == (200, b'{"status":"ok"}')
    connection.close()


def test_the_server_closes_sockets_it_accepts_past_the_cap_at_once(face: Face) -> None:
    """Idle sockets past the cap do not wait for the idle timeout: the face holds at most
    the cap (plus one accept batch) at any moment."""
    extra = [face.raw() for _ in range(3 * LIMITS.max_connections)]
    try:
        replies = [read_until_closed(sock) for sock in extra]
    finally:
        for sock in extra:
            sock.close()
    refused = [r for r in replies if r.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 2 * LIMITS.max_connections
