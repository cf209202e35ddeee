"""The HTTP/JSON face: REST routes (docs/ARCHITECTURE.md, "HTTP face") onto the gRPC API.

Every route is one (or two) calls to this gateway's gRPC server over loopback, with the
caller's credentials forwarded as metadata (see `metadata`), so the gRPC interceptors
apply to HTTP callers unchanged. gRPC errors map to the
`{"error": {"kind", "message"}}` envelope and statuses, with the gRPC `code` and
ErrorInfo `reason` added (see `errors`). Served by uvicorn in the gateway's event loop
(see `server`), each connection bounded in time and number (see `connection`);
`stream` relays InvokeStream as SSE.
"""

from tensorwasm_gateway.http.connection import ConnectionLimits
from tensorwasm_gateway.http.server import HttpFaceServer, start_http_face

__all__ = ["ConnectionLimits", "HttpFaceServer", "start_http_face"]
