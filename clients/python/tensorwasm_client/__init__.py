"""The TensorWasm Python client and the tensorwasm CLI.

`GatewayClient` (blocking) and `AsyncGatewayClient` (asyncio) call the gateway; failures
raise the `tensorwasm_client.errors` classes; `RetryPolicy` says what is retried.
"""

from tensorwasm_client.aio import AsyncGatewayClient
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.errors import TensorWasmError
from tensorwasm_client.retries import NO_RETRIES, RetryPolicy

__all__ = ["NO_RETRIES", "AsyncGatewayClient", "GatewayClient", "RetryPolicy", "TensorWasmError"]
