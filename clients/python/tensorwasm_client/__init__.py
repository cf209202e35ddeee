"""The TensorWasm Python client and the tensorwasm CLI.

`GatewayClient` (blocking) and `AsyncGatewayClient` (asyncio) call the gateway; failures
raise the `tensorwasm_client.errors` classes; `RetryPolicy` says what is retried.

They load on first use (`from tensorwasm_client import GatewayClient` works as usual), so
that `tensorwasm run`, which needs none of them, starts without grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tensorwasm_client.aio import AsyncGatewayClient
    from tensorwasm_client.client import GatewayClient
    from tensorwasm_client.errors import TensorWasmError
    from tensorwasm_client.retries import NO_RETRIES, RetryPolicy

__all__ = ["NO_RETRIES", "AsyncGatewayClient", "GatewayClient", "RetryPolicy", "TensorWasmError"]

_WHERE = {
    "AsyncGatewayClient": "tensorwasm_client.aio",
    "GatewayClient": "tensorwasm_client.client",
    "TensorWasmError": "tensorwasm_client.errors",
    "NO_RETRIES": "tensorwasm_client.retries",
    "RetryPolicy": "tensorwasm_client.retries",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tensorwasm_client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
