"""Group `gateway_registry`: Invoke through a gateway whose registry is on PostgreSQL
against one on SQLite, both in front of the same executor and store (goal: P50 ratio
≤ 1.05, i.e. no database round trip per call: the PostgreSQL gateway answers lookups from
its NOTIFY-invalidated cache)."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack, ServiceProcess

from tests.bench.gateways import extra_gateway
from tests.bench.groups.invoke import ADD_WAT, CALL_TIMEOUT_SECONDS, _check_add
from tests.bench.harness import Benchmark, RunConfig, group
from tests.engines.postgres import PostgresServer, postgres_bin_dir

FUNCTION_ID = "bench-add"
INVOKE_SQLITE = "gateway/invoke_add_sqlite_registry"
INVOKE_POSTGRES = "gateway/invoke_add_postgres_registry"
START_TIMEOUT_SECONDS = 60.0


@contextlib.contextmanager
def _gateway_on(
    stack: LocalStack, services: dict[str, ServiceProcess], name: str, database_url: str
) -> Iterator[str]:
    """A gateway process on `database_url`, before the stack's executor and store (both
    subjects are started this same way, so only their database differs)."""
    with extra_gateway(
        stack, services, name, database_url, start_timeout_seconds=START_TIMEOUT_SECONDS
    ) as (_, ready):
        yield str(ready["grpc_address"])


@group("gateway_registry")
def gateway_registry(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts PostgreSQL, the stack, and two more gateways before its executor and store,
    one on an SQLite file and one on PostgreSQL; deploys `add` on each and times Invoke."""
    del config
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make engines-postgres`")
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tensorwasm-bench-")))
        server = PostgresServer(bin_dir)
        cleanup.callback(server.remove)
        server.start()
        stack = LocalStack(
            temp / "stack", ephemeral_ports=True, extra_env={"OTEL_TRACES_EXPORTER": "none"}
        )
        cleanup.callback(stack.stop)
        services = stack.start()
        sqlite = cleanup.enter_context(
            _gateway_on(stack, services, "gateway-sqlite", f"sqlite://{temp}/registry.sqlite3")
        )
        postgres = cleanup.enter_context(
            _gateway_on(stack, services, "gateway-postgres", server.create_database())
        )

        module = bytes(wasmtime.wat2wasm(ADD_WAT))
        request = pb.InvokeRequest(
            name=f"functions/{FUNCTION_ID}",
            export_name="add",
            args=[values_pb2.Value(i32=1), values_pb2.Value(i32=2)],
        )
        calls = {}
        for name, address in ((INVOKE_SQLITE, sqlite), (INVOKE_POSTGRES, postgres)):
            with GatewayClient(address) as client:
                client.create_function(FUNCTION_ID, module)
            stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(address)))
            _check_add(stub.Invoke(request, timeout=CALL_TIMEOUT_SECONDS))
            calls[name] = functools.partial(stub.Invoke, request, timeout=CALL_TIMEOUT_SECONDS)
        params = {"request_bytes": request.ByteSize()}
        yield [
            Benchmark(
                INVOKE_SQLITE,
                calls[INVOKE_SQLITE],
                description="unary Invoke add(1, 2), gateway registry on SQLite (the default)",
                params=params,
            ),
            Benchmark(
                INVOKE_POSTGRES,
                calls[INVOKE_POSTGRES],
                anchors=(INVOKE_SQLITE,),
                description="the same Invoke, gateway registry on PostgreSQL (cached lookups)",
                params=params,
            ),
        ]
