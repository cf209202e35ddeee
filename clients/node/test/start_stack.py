"""Starts a real local stack for the Node client's tests and stops it when stdin closes.

Prints one JSON line: the gateway address, the tokens it accepts and the test modules
(compiled from tests/fixtures/wat). Run with the repo's .venv python.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import wasmtime
from tensorwasm_client.stack import LocalStack

ROOT = Path(__file__).resolve().parents[3]
MODULES = ("add", "numeric", "stream")
TOKENS = {"wildcard": "node-wild-0123456789abcdef", "acme": "node-acme-0123456789abcdef"}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tensorwasm-node-") as tmp:
        data_dir = Path(tmp)
        modules = {}
        for name in MODULES:
            text = (ROOT / "tests" / "fixtures" / "wat" / f"{name}.wat").read_text()
            path = data_dir / f"{name}.wasm"
            path.write_bytes(bytes(wasmtime.wat2wasm(text)))
            modules[name] = str(path)
        stack = LocalStack(
            data_dir / "stack",
            ephemeral_ports=True,
            extra_env={
                "TENSORWASM_GATEWAY_TOKENS": (
                    f"{TOKENS['wildcard']}:tenant=*;{TOKENS['acme']}:tenant=acme"
                ),
                "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "4",
                "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": "3",
            },
        )
        try:
            services = stack.start()
            gateway = services["gateway"].grpc_address
            print(json.dumps({"gateway": gateway, "tokens": TOKENS, "modules": modules}))
            sys.stdout.flush()
            sys.stdin.read()  # until the test closes our stdin (or dies)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
