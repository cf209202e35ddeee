"""Calls to executor replicas: routing, health, failover only where no call has started.

A call goes to the first replica of `routing.route` (rendezvous order on the module
digest, bounded load, health). It moves on to the next replica only when gRPC says the
call never left the gateway: the channel could not connect ("failed to connect to all
addresses", which grpc reports when no transport was ever picked for the call, so no
byte of the request was sent). Any other failure, UNAVAILABLE included ("Socket
closed", a reset, a GOAWAY the transport could not retry itself), may come after the
executor received the request, and is returned to the caller: a call is never executed
twice. Calls are made with wait_for_ready=False, so a replica that is down fails fast
instead of queueing the call until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import open_channel
from tensorwasm_common.deadlines import downstream_timeout
from tensorwasm_common.errors import ServiceError, UnavailableError
from tensorwasm_common.status import downstream_error
from tensorwasm_common.tls import ClientTls

from tensorwasm_gateway.calls import (
    AddressedCall,
    CallResult,
    CompiledModule,
    InstanceCall,
    InstanceLaunch,
    InstanceRestore,
    LaunchedInstance,
    Target,
    WasiConfig,
    WireMessage,
)
from tensorwasm_gateway.errors import HolderUnreachableError
from tensorwasm_gateway.limits import limits_to_wire
from tensorwasm_gateway.request_ids import CURRENT_REQUEST_ID, downstream_metadata
from tensorwasm_gateway.routing.call_stream import (
    CallStream,
    NotRunError,
    StreamUnsupportedError,
)
from tensorwasm_gateway.routing.rendezvous import ReplicaView, rendezvous_order, route
from tensorwasm_gateway.routing.replicas import ReplicaSource
from tensorwasm_gateway.settings import GatewaySettings
from tensorwasm_gateway.wire import exports_from_wire, offloads_to_wire, wasi_to_wire

_log = logging.getLogger(__name__)
# grpc's message when the load balancer found no connected transport for the call.
_NOT_STARTED = "failed to connect to all addresses"

EXECUTOR_CALLS = Counter(
    "tensorwasm_gateway_executor_calls",
    "Calls sent to executor replicas, by replica and outcome (ok, error, not_started).",
    ["replica", "outcome"],
)
EXECUTOR_FAILOVERS = Counter(
    "tensorwasm_gateway_executor_failovers",
    "Calls moved to another replica because the chosen one could not be connected.",
)
EXECUTOR_HEALTHY = Gauge(
    "tensorwasm_gateway_executor_healthy",
    "1 when the replica's last health check answered SERVING, else 0.",
    ["replica"],
)
EXECUTOR_IN_FLIGHT = Gauge(
    "tensorwasm_gateway_executor_in_flight", "Calls in flight on each replica.", ["replica"]
)


def _values(args: Sequence[WireMessage]) -> Sequence[values_pb2.Value]:
    # A call's arguments are the caller's wire `Value`s, relayed unread (see `calls`).
    return cast("Sequence[values_pb2.Value]", args)


def invoke_request(call: AddressedCall) -> pb.InvokeRequest:
    """The executor's InvokeRequest for an addressed call."""
    request = pb.InvokeRequest()
    request.CopyFrom(_TARGETS.request_of(call.target))
    request.export_name = call.export_name
    if call.args:
        request.args.extend(_values(call.args))
    request.stdin = call.stdin
    request.limits.CopyFrom(_limits_wire(call.limits))
    request.input = call.input
    return request


class _TargetRequests:
    """The part of an executor InvokeRequest that a call's target decides (module, tenant,
    WASI view, init export, offloads), built once per Target object: the function service
    hands out the same Target for every call of a function version, and converting the
    WASI view and offloads on each call cost more than the rest of the request. A Target
    cannot be a dict key (its WASI env is a dict), hence the identity check; the entry
    holds the Target, so its id is not reused while it is cached."""

    def __init__(self, entries: int = 4096) -> None:
        self._entries = entries
        self._requests: dict[int, tuple[Target, pb.InvokeRequest]] = {}

    def request_of(self, target: Target) -> pb.InvokeRequest:
        """The target's part of the request (never modified: callers copy it)."""
        cached = self._requests.get(id(target))
        if cached is not None and cached[0] is target:
            return cached[1]
        request = pb.InvokeRequest(
            module_digest=target.module_digest,
            tenant=target.tenant,
            wasi=wasi_to_wire(target.wasi),
            init_export=target.init_export,
            offloads=offloads_to_wire(target.offloads),
        )
        if len(self._requests) >= self._entries:
            self._requests.clear()
        self._requests[id(target)] = (target, request)
        return request


_TARGETS = _TargetRequests()
# A call's limits are few distinct values (a function's defaults under a tenant's
# ceiling); each message is only ever copied from.
_limits_wire = functools.lru_cache(maxsize=1024)(limits_to_wire)


def create_instance_request(launch: InstanceLaunch) -> pb.CreateInstanceRequest:
    """The executor's CreateInstanceRequest for an instance launch."""
    target: Target = launch.target
    request = pb.CreateInstanceRequest(
        module_digest=target.module_digest,
        tenant=target.tenant,
        stdin=launch.stdin,
        limits=limits_to_wire(launch.limits),
        wasi=wasi_to_wire(target.wasi),
        init_export=target.init_export,
        offloads=offloads_to_wire(target.offloads),
        input=launch.input,
        function_id=launch.function_id,
        checkpoint_seconds=launch.checkpoint_seconds,
    )
    if launch.idle_ttl_ns is not None:
        request.idle_ttl.FromNanoseconds(launch.idle_ttl_ns)
    return request


def call_instance_request(call: InstanceCall) -> pb.CallInstanceRequest:
    """The executor's CallInstanceRequest for an instance call."""
    return pb.CallInstanceRequest(
        instance_id=call.instance_id,
        tenant=call.tenant,
        export_name=call.export_name,
        args=_values(call.args),
        limits=limits_to_wire(call.limits),
        input=call.input,
    )


def call_result(outcome: invocation_pb2.InvocationOutcome) -> CallResult:
    """An executor's outcome as the domain relays it."""
    return CallResult(outcome=outcome, succeeded=outcome.HasField("success"))


def not_started(exc: grpc.aio.AioRpcError) -> bool:
    """True when grpc reports that the call was never sent to the replica, or the
    replica answered that it did not start it (a call stream's executor shutting down)."""
    if isinstance(exc, NotRunError):
        return True
    return exc.code() == grpc.StatusCode.UNAVAILABLE and _NOT_STARTED in (exc.details() or "")


# The largest request sent as a frame of a replica's call stream (bigger: a unary RPC).
CALL_STREAM_MAX_BYTES = 64 << 10
# The methods carried on the call stream, by their request frame's field.
_CARRIED = {"Invoke": "invoke", "CallInstance": "call_instance"}

# How often a replica last seen down is asked again (healthy ones: each health interval).
DOWN_RECHECK_SECONDS = 0.25


class Replica:
    """One executor replica: its channel, health and calls in flight."""

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int,
        service_token: str | None = None,
        tls: ClientTls | None = None,
        call_stream: bool = True,
    ) -> None:
        self.address = address
        self.channel = open_channel(
            address, max_message_bytes=max_message_bytes, service_token=service_token, tls=tls
        )
        self.stub = pb_grpc.ExecutorServiceStub(self.channel)
        # Short Invoke and CallInstance calls go as frames of one stream (`call_stream`).
        self.calls = (
            CallStream(self.stub, address, max_receive_bytes=max_message_bytes)
            if call_stream
            else None
        )
        self.in_flight = 0
        self.healthy = True  # optimistic until the first check answers
        # Read when scraped, not kept up to date on every call (two locked updates less
        # per call); a replica that joins again under the same address takes it over.
        EXECUTOR_IN_FLIGHT.labels(address).set_function(lambda: self.in_flight)
        self.calls_ok = EXECUTOR_CALLS.labels(address, "ok")  # counted on every call
        EXECUTOR_HEALTHY.labels(address).set(1)

    def view(self) -> ReplicaView:
        """The replica as routing sees it."""
        return ReplicaView(self.address, self.in_flight, self.healthy)

    def mark(self, healthy: bool) -> None:
        """Records the replica's health."""
        if healthy != self.healthy:
            _log.warning("executor %s is %s", self.address, "up" if healthy else "down")
        self.healthy = healthy
        EXECUTOR_HEALTHY.labels(self.address).set(int(healthy))

    def acquire(self) -> None:
        """Counts one more call in flight."""
        self.in_flight += 1

    def release(self) -> None:
        """Counts one call less in flight."""
        self.in_flight -= 1

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Counts one call in flight for as long as the block runs."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


class ExecutorPool:
    """The executor replicas; each module digest prefers the same replica."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        *,
        max_message_bytes: int,
        timeout: float,
        load_factor: float = 1.25,
        health_interval_seconds: float = 2.0,
        source: ReplicaSource | None = None,
        service_token: str | None = None,
        tls: ClientTls | None = None,
        call_stream_max_bytes: int = CALL_STREAM_MAX_BYTES,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._call_stream_max_bytes = call_stream_max_bytes
        self._service_token = service_token
        self._tls = tls
        self._timeout = timeout
        self._load_factor = load_factor
        self._health_interval = health_interval_seconds
        self._source = source
        self._replicas: dict[str, Replica] = {}
        self._retired: list[Replica] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.set_addresses(addresses)

    @property
    def addresses(self) -> list[str]:
        """The replicas currently configured."""
        return list(self._replicas)

    def any_healthy(self) -> bool:
        """True when some replica answered its last health check SERVING."""
        return any(replica.healthy for replica in self._replicas.values())

    def set_addresses(self, addresses: tuple[str, ...] | list[str]) -> None:
        """Adopts a new set of replicas (a DNS answer); kept ones keep their channel."""
        wanted = list(dict.fromkeys(addresses))
        for address in [a for a in self._replicas if a not in wanted]:
            self._retired.append(self._replicas.pop(address))  # closed at close()
            EXECUTOR_HEALTHY.remove(address)
        for address in wanted:
            if address not in self._replicas:
                self._replicas[address] = Replica(
                    address,
                    max_message_bytes=self._max_message_bytes,
                    service_token=self._service_token,
                    tls=self._tls,
                    call_stream=self._call_stream_max_bytes > 0,
                )
        if wanted:
            _log.info("executor replicas: %s", ",".join(wanted))

    def start(self) -> None:
        """Starts health polling (and re-resolution of the replica source, if any)."""
        self._tasks.append(asyncio.create_task(self._poll_health()))
        if self._source is not None:
            self._tasks.append(asyncio.create_task(self._follow_source(self._source)))

    async def check_health(self, *, down_only: bool = False) -> None:
        """Asks every replica's grpc.health.v1 once (with `down_only`, those last seen
        down) and records the answers."""

        async def check(replica: Replica) -> None:
            try:
                reply = await health_pb2_grpc.HealthStub(replica.channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=max(self._health_interval, 0.5)
                )
                replica.mark(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                replica.mark(False)

        replicas = [r for r in self._replicas.values() if not (down_only and r.healthy)]
        await asyncio.gather(*(check(r) for r in replicas))

    async def _poll_health(self) -> None:
        """Every replica each health interval; a replica seen down more often (every
        DOWN_RECHECK_SECONDS), so one that restarts takes calls again within about that
        plus the channel's reconnect backoff, not a whole interval later."""
        recheck = min(self._health_interval, DOWN_RECHECK_SECONDS)
        next_full = 0.0
        while True:
            now = asyncio.get_running_loop().time()
            await self.check_health(down_only=now < next_full)
            if now >= next_full:
                next_full = now + self._health_interval
            await asyncio.sleep(recheck)

    async def _follow_source(self, source: ReplicaSource) -> None:
        while True:
            await asyncio.sleep(source.interval_seconds)
            try:
                addresses = await source.resolve()
            except OSError as exc:  # keep the last answer rather than route nowhere
                _log.warning("could not resolve executors (%s); keeping the last answer", exc)
                continue
            if addresses and sorted(addresses) != sorted(self._replicas):
                self.set_addresses(addresses)

    def order(self, digest: str) -> list[str]:
        """The replicas a call of `digest` would try, best first."""
        if len(self._replicas) == 1:  # what `route` answers for one replica, for less
            return list(self._replicas)
        return route(
            digest, [r.view() for r in self._replicas.values()], load_factor=self._load_factor
        )

    async def prepare(
        self,
        digest: str,
        *,
        init_export: str = "",
        tenant: str = "",
        wasi: WasiConfig | None = None,
    ) -> CompiledModule:
        """Compiles on the preferred replica; PrepareModule is idempotent, so any
        UNAVAILABLE replica is skipped for the next one. With `wasi`, the replica checks
        it as each call's would be (a directory outside the tenant's grant is refused)."""
        request = pb.PrepareModuleRequest(
            module_digest=digest, init_export=init_export, tenant=tenant
        )
        if wasi is not None:
            request.wasi.CopyFrom(wasi_to_wire(wasi))
        last: ServiceError | None = None
        for address in rendezvous_order(digest, list(self._replicas)):
            try:
                response: pb.PrepareModuleResponse = await self._replicas[
                    address
                ].stub.PrepareModule(request, timeout=downstream_timeout(self._timeout))
                return CompiledModule(exports_from_wire(response.exports))
            except grpc.aio.AioRpcError as exc:
                last = downstream_error(exc, f"executor {address}")
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise last from exc
        raise last or UnavailableError("no executor replica is configured")

    async def invoke(self, call: AddressedCall) -> CallResult:
        """Runs the call on the routed replica, failing over only while not started."""
        digest = call.target.module_digest
        _, response = await self._routed(digest, "Invoke", invoke_request(call))
        return call_result(response.outcome)

    async def create_instance(self, launch: InstanceLaunch) -> LaunchedInstance:
        """Creates the instance on the routed replica (failing over only while not
        started); the answer names that replica, where every later call of it goes."""
        request = create_instance_request(launch)
        address, response = await self._routed(
            launch.target.module_digest, "CreateInstance", request
        )
        return LaunchedInstance(
            executor=address,
            instance_id=response.instance_id,
            idle_ttl_ns=response.idle_ttl.ToNanoseconds(),
            result=call_result(response.outcome),
        )

    async def invoke_stream(self, call: AddressedCall) -> ExecutorStream:
        """Starts the call on the routed replica and returns its event stream. The first
        event is read here, so a replica that cannot be connected is failed over like
        a unary call; a call that started is never resent."""
        message = pb.InvokeStreamRequest(invocation=invoke_request(call))

        async def start(replica: Replica) -> ExecutorStream:
            call = replica.stub.InvokeStream(
                message,
                timeout=downstream_timeout(self._timeout),
                wait_for_ready=False,
                metadata=downstream_metadata(),
            )
            replica.acquire()
            try:
                first = await call.read()
            except BaseException:
                call.cancel()
                replica.release()
                raise
            return ExecutorStream(call, replica.address, first, replica.release)

        _, stream = await self._failover(call.target.module_digest, start)
        assert isinstance(stream, ExecutorStream)
        return stream

    async def _routed(self, digest: str, method: str, request: Any) -> tuple[str, Any]:
        async def call(replica: Replica) -> Any:
            replica.acquire()  # what `holding` does, without a context manager per call
            try:
                return await self._send(replica, method, request, wait_for_ready=False)
            finally:
                replica.release()

        return await self._failover(digest, call)

    async def _send(
        self, replica: Replica, method: str, request: Any, *, wait_for_ready: bool | None = None
    ) -> Any:
        """One call of `method` to the replica: as a frame of its call stream when the
        method is carried there and the request is small enough (a big one would hold
        up the stream's other calls while it is sent), else as a unary RPC."""
        timeout = downstream_timeout(self._timeout)
        stream = replica.calls
        kind = _CARRIED.get(method)
        if (
            kind is not None
            and stream is not None
            and not stream.unsupported
            and request.ByteSize() <= self._call_stream_max_bytes
        ):
            try:
                return await stream.call(
                    kind, request, timeout_seconds=timeout, request_id=CURRENT_REQUEST_ID.get()
                )
            except StreamUnsupportedError:
                _log.warning("executor %s has no call stream: calling it unary", replica.address)
        return await getattr(replica.stub, method)(
            request,
            timeout=timeout,
            wait_for_ready=wait_for_ready,
            metadata=downstream_metadata(),
        )

    async def _failover(
        self, digest: str, attempt: Callable[[Replica], Awaitable[Any]]
    ) -> tuple[str, Any]:
        """Tries the routed replicas in turn while grpc says the call was not started."""
        last: grpc.aio.AioRpcError | None = None
        for index, address in enumerate(self.order(digest)):
            replica = self._replicas.get(address)
            if replica is None:  # left the configuration while we were trying others
                continue
            if index:
                EXECUTOR_FAILOVERS.inc()
            try:
                result = await attempt(replica)
            except grpc.aio.AioRpcError as exc:
                if not_started(exc):
                    EXECUTOR_CALLS.labels(address, "not_started").inc()
                    replica.mark(False)  # until its next health check says otherwise
                    last = exc
                    continue
                EXECUTOR_CALLS.labels(address, "error").inc()
                raise downstream_error(exc, f"executor {address}") from exc
            replica.calls_ok.inc()
            return address, result
        if last is None:
            raise UnavailableError("no executor replica is configured")
        raise downstream_error(last, "executor replicas") from last

    async def call_instance(self, address: str, call: InstanceCall) -> CallResult:
        """Calls an instance on the replica that holds it."""
        response: pb.CallInstanceResponse = await self._pinned(
            address, "CallInstance", call_instance_request(call)
        )
        return call_result(response.outcome)

    async def delete_instance(self, address: str, tenant: str, instance_id: str) -> None:
        """Terminates an instance on the replica that holds it."""
        request = pb.DeleteInstanceRequest(instance_id=instance_id, tenant=tenant)
        await self._pinned(address, "DeleteInstance", request)

    async def snapshot_instance(
        self, address: str, tenant: str, instance_id: str, max_state_bytes: int
    ) -> str:
        """Snapshots an instance on the replica that holds it; -> the record's id."""
        request = pb.SnapshotInstanceRequest(
            instance_id=instance_id, tenant=tenant, max_state_bytes=max_state_bytes
        )
        response: pb.SnapshotInstanceResponse = await self._pinned(
            address, "SnapshotInstance", request
        )
        return response.snapshot_id

    async def restore_instance(
        self, launch: InstanceLaunch, restore: InstanceRestore, *, avoid: str = ""
    ) -> LaunchedInstance:
        """Restores an instance on the routed replica (failing over only while not
        started), skipping `avoid` (the replica that held it) while others are healthy."""
        target = launch.target
        request = pb.RestoreInstanceRequest(
            snapshot_id=restore.snapshot_id,
            instance_id=restore.instance_id,
            tenant=target.tenant,
            function_id=launch.function_id,
            module_digest=target.module_digest,
            limits=limits_to_wire(launch.limits),
            wasi=wasi_to_wire(target.wasi),
            offloads=offloads_to_wire(target.offloads),
            checkpoint_seconds=launch.checkpoint_seconds,
            max_restore_bytes=restore.max_restore_bytes,
            require_signature=restore.require_signature,
        )
        if launch.idle_ttl_ns is not None:
            request.idle_ttl.FromNanoseconds(launch.idle_ttl_ns)
        if avoid in self._replicas:
            self._replicas[avoid].mark(False)  # until its next health check says otherwise
        address, response = await self._routed(target.module_digest, "RestoreInstance", request)
        return LaunchedInstance(
            executor=address,
            instance_id=response.instance_id,
            idle_ttl_ns=response.idle_ttl.ToNanoseconds(),
            result=CallResult(outcome=invocation_pb2.InvocationOutcome(), succeeded=True),
        )

    async def _pinned(self, address: str, method: str, request: Any) -> Any:
        replica = self._replicas.get(address)
        if replica is None:  # the replica left the configuration, with its instances
            raise HolderUnreachableError(
                f"executor {address} is no longer configured", metadata={"executor": address}
            )
        try:
            with replica.holding():
                return await self._send(replica, method, request)
        except grpc.aio.AioRpcError as exc:
            error = downstream_error(exc, f"executor {address}")
            if not_started(exc):  # the call never left: the instance may be recovered
                raise HolderUnreachableError(
                    error.message,
                    metadata={**error.metadata, "executor": address},
                    retry_after_seconds=error.retry_after_seconds,
                ) from exc
            raise error from exc

    async def close(self) -> None:
        """Stops the background tasks and closes every channel."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in [*self._replicas.values(), *self._retired]:
            if replica.calls is not None:
                await replica.calls.close()
            await replica.channel.close()


async def open_executor_pool(settings: GatewaySettings) -> ExecutorPool:
    """The pool the settings describe (a static list, or a DNS name resolved now and
    followed), with health polling started."""
    source = None
    addresses = settings.executor_addresses
    if settings.executor_dns:
        source = ReplicaSource(
            settings.executor_dns, interval_seconds=settings.executor_resolve_interval_seconds
        )
        try:
            addresses = tuple(await source.resolve())
        except OSError as exc:  # start anyway: the name may resolve once the fleet is up
            _log.warning("could not resolve %s: %s", settings.executor_dns, exc)
            addresses = ()
    pool = ExecutorPool(
        addresses,
        max_message_bytes=settings.max_message_bytes,
        timeout=settings.downstream_timeout_seconds,
        load_factor=settings.executor_load_factor,
        health_interval_seconds=settings.executor_health_interval_seconds,
        source=source,
        service_token=settings.service_token(),
        tls=settings.client_tls(),
        call_stream_max_bytes=settings.executor_call_stream_max_bytes,
    )
    pool.start()
    return pool


class ExecutorStream:
    """The events of one executor InvokeStream call; `cancel()` stops the call (and with
    it the guest). Iterate it once; leaving the iteration early cancels the call too."""

    def __init__(
        self, call: Any, address: str, first: Any, release: Callable[[], None] | None = None
    ) -> None:
        self._call = call
        self._first = first
        self._release = release
        self.address = address

    def cancel(self) -> None:
        """Cancels the executor call; a no-op once it has ended."""
        self._call.cancel()
        self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    async def __aiter__(self) -> AsyncIterator[pb.InvokeStreamResponse]:
        try:
            message = self._first
            while message is not grpc.aio.EOF:
                yield message
                message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, f"executor {self.address}") from exc
        finally:
            self._call.cancel()
            self._done()
