"""Unit tests for tensorwasm_gateway.routing.executors: failover only before a call started,
health-aware routing and replica sets, against in-process fake executor servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.call_limits import CallLimits
from tensorwasm_common.errors import Code, ServiceError
from tensorwasm_gateway.calls import AddressedCall, OffloadDeclaration, Target, WasiConfig
from tensorwasm_gateway.limits import limits_to_wire
from tensorwasm_gateway.routing.executors import ExecutorPool, invoke_request
from tensorwasm_gateway.routing.rendezvous import rendezvous_order
from tensorwasm_gateway.routing.replicas import ReplicaSource
from tensorwasm_gateway.wire import offloads_to_wire, wasi_to_wire


class FakeExecutor(pb_grpc.ExecutorServiceServicer):
    """Counts calls; `fail_with` makes every call abort with that code after arriving."""

    def __init__(self) -> None:
        self.invokes = 0
        self.streams = 0
        self.fail_with: grpc.StatusCode | None = None
        self.health: health.aio.HealthServicer | None = None

    async def serve(self, serving: bool) -> None:
        """Sets what the replica's health check answers."""
        assert self.health is not None
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING if serving else 2)

    async def Invoke(self, request: pb.InvokeRequest, context: Any) -> pb.InvokeResponse:
        self.invokes += 1
        if self.fail_with is not None:
            await context.abort(self.fail_with, "replica failing after receiving the call")
        return pb.InvokeResponse(outcome=invocation_pb2.InvocationOutcome(stdout=b"ran"))

    async def InvokeStream(self, request: pb.InvokeStreamRequest, context: Any) -> Any:
        self.streams += 1
        yield pb.InvokeStreamResponse(
            output=invocation_pb2.OutputChunk(stream=invocation_pb2.OUTPUT_STREAM_STDOUT, data=b"a")
        )
        yield pb.InvokeStreamResponse(outcome=invocation_pb2.InvocationOutcome())


async def start_fake(serving: bool = True) -> tuple[grpc.aio.Server, str, FakeExecutor]:
    fake = FakeExecutor()
    server = grpc.aio.server()
    pb_grpc.add_ExecutorServiceServicer_to_server(fake, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    status = health_pb2.HealthCheckResponse.SERVING if serving else 2  # NOT_SERVING
    await health_servicer.set("", status)
    fake.health = health_servicer
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", fake


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def key_preferring(first: str, replicas: list[str]) -> str:
    """A module digest whose rendezvous order starts with `first`."""
    for i in range(1000):
        key = f"{i:064x}"
        if rendezvous_order(key, replicas)[0] == first:
            return key
    raise AssertionError("no key prefers that replica")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def pool(addresses: list[str]) -> ExecutorPool:
    return ExecutorPool(tuple(addresses), max_message_bytes=4 << 20, timeout=10.0)


def call_of(digest: str) -> AddressedCall:
    """A call of the module `digest` (what routing looks at)."""
    return AddressedCall(Target(tenant="", module_digest=digest), "")


def test_a_replica_that_cannot_be_connected_is_failed_over() -> None:
    async def scenario() -> None:
        server, live, fake = await start_fake()
        dead = closed_address()
        executors = pool([dead, live])
        key = key_preferring(dead, [dead, live])
        try:
            response = await executors.invoke(call_of(key))
            assert response.outcome.stdout == b"ran"
            assert fake.invokes == 1
            # the dead replica is now known down: routed last without being tried first
            assert executors.order(key) == [live, dead]
        finally:
            await executors.close()
            await server.stop(None)

    run(scenario)


def test_a_call_that_reached_a_replica_is_not_sent_to_another() -> None:
    async def scenario() -> None:
        first_server, first, first_fake = await start_fake()
        second_server, second, second_fake = await start_fake()
        first_fake.fail_with = grpc.StatusCode.UNAVAILABLE
        executors = pool([first, second])
        key = key_preferring(first, [first, second])
        try:
            with pytest.raises(ServiceError) as caught:
                await executors.invoke(call_of(key))
            assert caught.value.code == Code.UNAVAILABLE
            assert (first_fake.invokes, second_fake.invokes) == (1, 0)
        finally:
            await executors.close()
            await first_server.stop(None)
            await second_server.stop(None)

    run(scenario)


def test_every_replica_unreachable_is_unavailable() -> None:
    async def scenario() -> None:
        executors = pool([closed_address(), closed_address()])
        try:
            with pytest.raises(ServiceError) as caught:
                await executors.invoke(call_of("ab" * 32))
            assert caught.value.code == Code.UNAVAILABLE
            assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
        finally:
            await executors.close()

    run(scenario)


def test_a_stream_fails_over_before_its_first_event_and_relays_it() -> None:
    async def scenario() -> None:
        server, live, fake = await start_fake()
        dead = closed_address()
        executors = pool([dead, live])
        key = key_preferring(dead, [dead, live])
        try:
            stream = await executors.invoke_stream(call_of(key))
            events = [event async for event in stream]
            assert [e.WhichOneof("event") for e in events] == ["output", "outcome"]
            assert stream.address == live
            assert fake.streams == 1
            assert executors.order(key)[0] == live
        finally:
            await executors.close()
            await server.stop(None)

    run(scenario)


def test_not_serving_replicas_are_routed_last_after_a_health_check() -> None:
    async def scenario() -> None:
        sick_server, sick, sick_fake = await start_fake(serving=False)
        well_server, well, well_fake = await start_fake()
        executors = pool([sick, well])
        key = key_preferring(sick, [sick, well])
        try:
            assert executors.order(key)[0] == sick  # unknown health: optimistic
            await executors.check_health()
            assert executors.order(key) == [well, sick]
            await executors.invoke(call_of(key))
            assert (sick_fake.invokes, well_fake.invokes) == (0, 1)
        finally:
            await executors.close()
            await sick_server.stop(None)
            await well_server.stop(None)

    run(scenario)


def _in_flight_gauge(address: str) -> float | None:
    return REGISTRY.get_sample_value("tensorwasm_gateway_executor_in_flight", {"replica": address})


def test_in_flight_calls_are_counted_while_they_run_and_released() -> None:
    async def scenario() -> None:
        server, live, _fake = await start_fake()
        executors = pool([live])
        try:
            stream = await executors.invoke_stream(call_of("cd" * 32))
            assert executors._replicas[live].in_flight == 1
            assert _in_flight_gauge(live) == 1
            _ = [event async for event in stream]
            assert executors._replicas[live].in_flight == 0
            await executors.invoke(call_of("cd" * 32))
            assert executors._replicas[live].in_flight == 0
            assert _in_flight_gauge(live) == 0
        finally:
            await executors.close()
            await server.stop(None)

    run(scenario)


def test_a_dns_source_replaces_the_replica_set() -> None:
    answers = [["10.0.0.1:50052", "10.0.0.2:50052"], ["10.0.0.2:50052", "10.0.0.3:50052"]]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("executors.svc", 50052)
        return answers.pop(0)

    async def scenario() -> None:
        source = ReplicaSource("executors.svc:50052", interval_seconds=0.1, resolver=resolver)
        executors = pool(await source.resolve())
        try:
            assert sorted(executors.addresses) == ["10.0.0.1:50052", "10.0.0.2:50052"]
            executors.set_addresses(await source.resolve())
            assert sorted(executors.addresses) == ["10.0.0.2:50052", "10.0.0.3:50052"]
        finally:
            await executors.close()

    run(scenario)


def test_localhost_resolves_to_loopback_replicas() -> None:
    async def scenario() -> None:
        addresses = await ReplicaSource("localhost:50052", interval_seconds=1).resolve()
        assert "127.0.0.1:50052" in addresses

    run(scenario)


def test_a_down_only_check_asks_only_the_replicas_seen_down() -> None:
    async def scenario() -> None:
        sick_server, sick, sick_fake = await start_fake(serving=False)
        well_server, well, well_fake = await start_fake()
        executors = pool([sick, well])
        try:
            await executors.check_health()
            assert [executors._replicas[a].healthy for a in (sick, well)] == [False, True]
            await sick_fake.serve(True)  # the down replica is back
            await well_fake.serve(False)  # and the other goes down, unseen yet
            await executors.check_health(down_only=True)
            assert [executors._replicas[a].healthy for a in (sick, well)] == [True, True]
            await executors.check_health()
            assert [executors._replicas[a].healthy for a in (sick, well)] == [True, False]
        finally:
            await executors.close()
            await sick_server.stop(None)
            await well_server.stop(None)

    run(scenario)


def test_invoke_request_holds_the_target_and_the_calls_own_fields() -> None:
    target = Target(
        tenant="acme",
        module_digest="ab" * 32,
        wasi=WasiConfig(argv=("prog",), env={"K": "v"}, read_only_dir="data", guest_dir="/d"),
        init_export="init",
        offloads=(OffloadDeclaration("mm", "matmul", ("a", "b")),),
    )
    calls = [
        AddressedCall(
            target=target,
            export_name="run",
            args=(values_pb2.Value(i32=1), values_pb2.Value(i64=2)),
            stdin=b"in",
            limits=CallLimits(timeout_seconds=1.5, fuel=10),
            input=b"tensor",
        ),
        AddressedCall(target=target, export_name="other"),  # the same target again
    ]
    for call in calls:
        expected = pb.InvokeRequest(
            module_digest=target.module_digest,
            export_name=call.export_name,
            args=call.args,
            stdin=call.stdin,
            limits=limits_to_wire(call.limits),
            tenant=target.tenant,
            wasi=wasi_to_wire(target.wasi),
            init_export=target.init_export,
            offloads=offloads_to_wire(target.offloads),
            input=call.input,
        )
        assert invoke_request(call) == expected
        assert invoke_request(call).SerializeToString() == expected.SerializeToString()
