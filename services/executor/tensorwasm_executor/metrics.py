"""The executor's own Prometheus series (requests by method and code live in tensorwasm_common)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from prometheus_client import Counter

from tensorwasm_executor.wasm.outcomes import Outcome

CAP_HITS = Counter(
    "tensorwasm_executor_cap_hits",
    "Guest calls during which a memory.grow or table.grow was refused by the executor's cap "
    "(the guest saw -1), by kind (memory, table).",
    ["kind"],
)


def count_cap_hits(future: concurrent.futures.Future[Any]) -> None:
    """A done-callback of a guest call's future: counts the caps its outcome ran into.

    The future's result is an Outcome, or a tuple holding one (instance creation).
    """
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    outcomes = (
        [item for item in result if isinstance(item, Outcome)]
        if isinstance(result, tuple)
        else [result]
    )
    for outcome in outcomes:
        if isinstance(outcome, Outcome):
            if outcome.memory_cap_hit:
                CAP_HITS.labels("memory").inc()
            if outcome.table_cap_hit:
                CAP_HITS.labels("table").inc()
