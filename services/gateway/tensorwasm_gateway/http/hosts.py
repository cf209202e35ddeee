"""The face's Host allowlist (TENSORWASM_GATEWAY_TRUSTED_HOSTS): requests naming another
host are answered 400 `bad_request` before any route runs."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from tensorwasm_gateway.http.errors import JSON_TYPE, refusal_body

_DEFAULT_PORTS = (":80", ":443")


class TrustedHosts:
    """ASGI middleware: the `Host` header must be one of `hosts` (case-insensitive, exact).

    A default port (:80, :443) in the header is ignored unless an entry names a port, so
    `example.com` admits `example.com:443` while `example.com:8443` must be listed as is.
    """

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self._hosts = frozenset(h.lower() for h in hosts)
        self._ports_listed = any(":" in h for h in self._hosts)

    def allows(self, host: str) -> bool:
        """Whether a request's Host header value is on the list."""
        host = host.strip().lower()
        if not self._ports_listed and host.endswith(_DEFAULT_PORTS):
            host = host.rsplit(":", 1)[0]
        return host in self._hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        if len(values) == 1 and self.allows(values[0]):
            await self.app(scope, receive, send)
            return
        body = refusal_body("bad_request", "the Host header is not a trusted host")
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", JSON_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
