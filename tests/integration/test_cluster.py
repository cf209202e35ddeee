"""The multi-replica proof (tests/engines/cluster.py) as a test: PostgreSQL + SeaweedFS +
2 gateways + 3 executors + 2 store replicas + dispatcher + jit cache on loopback, under
8 callers and a deploy loop, one replica of each tier killed -9 and started again.

Asserts what must hold whatever the machine's speed: no acknowledged deploy lost, no wrong
answer, no request id run twice, the rate limit held across both gateways, every fault
recovered and every restarted replica took work again. The times (recovery, first call
after a restart) are reported by `make cluster-demo`, not asserted here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.engines.cluster import Cluster, run_proof
from tests.engines.postgres import require_postgres

pytestmark = [pytest.mark.integration, pytest.mark.engines]


# Eleven processes and two engines on loopback: minutes on a loaded machine.
@pytest.mark.timeout(1200)
def test_the_cluster_survives_a_kill_of_each_tier_with_nothing_lost(tmp_path: Path) -> None:
    require_postgres()
    with Cluster(tmp_path) as cluster:
        report = run_proof(cluster, callers=8, log=print)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.wrong_answers == 0
    assert report.lost_deploys == []
    assert report.duplicate_request_ids == []
    assert report.acknowledged_deploys > 0
    assert report.cross_gateway_checked == report.acknowledged_deploys
    assert report.calls_ok > 0
    assert report.rate_admitted <= report.rate_bound
    assert [f.service for f in report.faults] == ["gateway-2", "executor-2", "snapshot-2"]
    for fault in report.faults:
        assert not math.isnan(fault.first_use_seconds), fault.service
