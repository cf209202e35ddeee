"""The board `tensorwasm observe` shows: the fleet's state summed from the services'
metrics (calls, errors by reason, latency, per-tenant usage, executor admission, the
dispatcher's queue and GPU time, the store's usage)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from tensorwasm_client.observe.scrape import LabelFilter, Scrape, histogram_quantile

# The gateway methods whose latency the board shows: the calls that run a guest.
INVOKE_METHODS = frozenset({"Invoke", "InvokeStream", "CallInstance"})
# The label of calls refused before their tenant was known (failed authentication).
NO_TENANT = "-"
_REPLICA_SUFFIX = re.compile(r"-\d+$")


def source_kind(name: str) -> str:
    """The service a metrics source belongs to: `executor-2` -> `executor`."""
    return _REPLICA_SUFFIX.sub("", name)


@dataclass(frozen=True)
class SourceState:
    """A metrics source: its name, address, and why it could not be read ("" if it was)."""

    name: str
    address: str
    error: str = ""


@dataclass(frozen=True)
class TenantRow:
    """One tenant's usage since the services started."""

    tenant: str
    calls: int = 0
    errors: int = 0
    gpu_seconds: float = 0.0
    kernel_launches: int = 0
    staged_bytes: int = 0


@dataclass(frozen=True)
class Board:
    """One frame of the board: counts since the services started, gauges now, and the
    call rate over the time since the previous frame (None on the first). P50/P99 are
    those of the calls since the previous frame when there were any
    (`latency_window` True), else of every call since the gateway started."""

    sources: tuple[SourceState, ...]
    calls_total: int = 0
    calls_per_second: float | None = None
    errors_total: int = 0
    errors_by_reason: Mapping[str, int] = field(default_factory=dict)
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None
    latency_window: bool = False
    tenants: tuple[TenantRow, ...] = ()
    executor_in_flight: int = 0
    executor_in_flight_limit: int = 0
    executor_queued_calls: int = 0
    executor_refusals: Mapping[str, int] = field(default_factory=dict)
    active_instances: int = 0
    dispatcher_queued_batches: int = 0
    dispatcher_workers: int = 0
    gpu_seconds_total: float = 0.0
    kernel_launches_total: int = 0
    store_objects: int | None = None
    store_bytes: int | None = None
    store_bytes_at_rest: int | None = None
    store_refs: int | None = None
    # The invoking calls' latency histogram since the gateway started: (bound, count).
    latency_buckets: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict[str, object]:
        """The frame as a JSON document (without the raw histogram)."""
        document = asdict(self)
        del document["latency_buckets"]
        return document


def build_board(
    scrapes: Mapping[str, Scrape],
    sources: tuple[SourceState, ...],
    previous: Board | None = None,
    elapsed_seconds: float = 0.0,
) -> Board:
    """The board from the scrapes of each service kind (`gateway`, `executor`, ...; the
    replicas of a kind summed into one Scrape); the call rate from `previous`, taken
    `elapsed_seconds` earlier."""
    empty = Scrape(())
    gateway = scrapes.get("gateway", empty)
    executor = scrapes.get("executor", empty)
    dispatcher = scrapes.get("dispatcher", empty)
    store = scrapes.get("snapshot", empty)

    calls_total = int(gateway.total("tensorwasm_gateway_invocations_total"))
    errors = _ints(gateway.by("tensorwasm_grpc_server_errors_total", "reason", _GATEWAY))
    invoking: LabelFilter = {
        "service": "gateway",
        "method": lambda method: method.rpartition("/")[2] in INVOKE_METHODS,
    }
    buckets = tuple(gateway.buckets("tensorwasm_grpc_server_request_duration_seconds", invoking))
    window = _window(buckets, previous)
    measured = list(window or buckets)
    return Board(
        sources=sources,
        calls_total=calls_total,
        calls_per_second=_rate(calls_total, previous, elapsed_seconds),
        errors_total=sum(errors.values()),
        errors_by_reason=dict(sorted(errors.items(), key=lambda item: (-item[1], item[0]))),
        latency_p50_seconds=histogram_quantile(0.5, measured),
        latency_p99_seconds=histogram_quantile(0.99, measured),
        latency_window=window is not None,
        tenants=_tenants(gateway, dispatcher),
        executor_in_flight=int(executor.total("tensorwasm_executor_calls_in_flight")),
        executor_in_flight_limit=int(executor.total("tensorwasm_executor_calls_in_flight_limit")),
        executor_queued_calls=int(
            executor.total("tensorwasm_executor_queued_calls", {"pool": "guest"})
        ),
        executor_refusals=_ints(
            executor.by("tensorwasm_executor_admission_refusals_total", "cause")
        ),
        active_instances=int(executor.total("tensor_wasm_active_instances")),
        dispatcher_queued_batches=int(dispatcher.total("tensorwasm_dispatcher_queued_batches")),
        dispatcher_workers=int(dispatcher.total("tensorwasm_dispatcher_workers")),
        gpu_seconds_total=dispatcher.total("tensorwasm_dispatcher_kernel_seconds_total"),
        kernel_launches_total=int(dispatcher.total("tensorwasm_dispatcher_launches_total")),
        store_objects=_gauge(store, "tensorwasm_snapshot_objects"),
        store_bytes=_gauge(store, "tensorwasm_snapshot_object_bytes", {"kind": "plain"}),
        store_bytes_at_rest=_gauge(store, "tensorwasm_snapshot_object_bytes", {"kind": "stored"}),
        store_refs=_gauge(store, "tensorwasm_snapshot_refs"),
        latency_buckets=buckets,
    )


_GATEWAY = {"service": "gateway"}


def _tenants(gateway: Scrape, dispatcher: Scrape) -> tuple[TenantRow, ...]:
    """Each tenant's calls and errors (the gateway's count) and GPU use (the dispatcher's)."""
    calls = gateway.by("tensorwasm_gateway_invocations_total", "tenant")
    failed = gateway.by(
        "tensorwasm_gateway_invocations_total", "tenant", {"code": lambda code: code != "OK"}
    )
    refused = gateway.by("tensorwasm_gateway_rejections_total", "tenant")
    gpu = dispatcher.by("tensorwasm_dispatcher_kernel_seconds_total", "tenant")
    launches = dispatcher.by("tensorwasm_dispatcher_launches_total", "tenant")
    staged = dispatcher.by("tensorwasm_dispatcher_staged_bytes", "tenant")
    names = set(calls) | set(refused) | set(gpu) | set(launches) | set(staged)
    rows = [
        TenantRow(
            tenant=name or NO_TENANT,
            calls=int(calls.get(name, 0)),
            errors=int(failed.get(name, 0) + refused.get(name, 0)),
            gpu_seconds=gpu.get(name, 0.0),
            kernel_launches=int(launches.get(name, 0)),
            staged_bytes=int(staged.get(name, 0)),
        )
        for name in names
    ]
    return tuple(sorted(rows, key=lambda row: (-row.calls, -row.gpu_seconds, row.tenant)))


def _window(
    buckets: tuple[tuple[float, float], ...], previous: Board | None
) -> list[tuple[float, float]] | None:
    """The histogram of the calls since `previous` (None: no previous frame, no call since,
    or the gateway restarted and its counts began again)."""
    if previous is None or not buckets:
        return None
    before = dict(previous.latency_buckets)
    window = [(bound, count - before.get(bound, 0.0)) for bound, count in buckets]
    if any(count < 0 for _, count in window) or window[-1][1] <= 0:
        return None
    return window


def _rate(total: int, previous: Board | None, elapsed_seconds: float) -> float | None:
    if previous is None or elapsed_seconds <= 0 or total < previous.calls_total:
        return None  # no window yet, or the gateway restarted (its counters began again)
    return (total - previous.calls_total) / elapsed_seconds


def _gauge(scrape: Scrape, name: str, labels: Mapping[str, str] | None = None) -> int | None:
    return int(scrape.total(name, labels)) if scrape.has(name) else None


def _ints(values: Mapping[str, float]) -> dict[str, int]:
    return {key: int(value) for key, value in values.items() if value}
