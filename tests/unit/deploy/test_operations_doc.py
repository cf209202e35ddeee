"""docs/OPERATIONS.md keeps up with the code: every setting of every service is listed, and
every alert rule has its runbook section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from tensorwasm_common.settings import ServerSettings, env_name
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_gateway.settings import GatewaySettings
from tensorwasm_jit.settings import JitSettings
from tensorwasm_snapshot.settings import SnapshotSettings

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "OPERATIONS.md").read_text()


def test_every_setting_is_documented() -> None:
    common = {f.name for f in dataclasses.fields(ServerSettings)}
    missing = [f"`{name.upper()}`" for name in common if f"`{name.upper()}`" not in DOC]
    for service, settings in [
        ("gateway", GatewaySettings), ("executor", ExecutorSettings),
        ("dispatcher", DispatcherSettings), ("snapshot", SnapshotSettings), ("jit", JitSettings),
    ]:  # fmt: skip
        for field in dataclasses.fields(settings):
            name = env_name(service, field.name)
            if field.name not in common and f"`{name}`" not in DOC:
                missing.append(name)
    assert missing == []


def test_every_alert_has_a_runbook() -> None:
    rules = yaml.safe_load((ROOT / "deploy/observability/prometheus/alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            alert = rule["alert"]
            assert f"\n### Runbook: {alert}\n" in DOC, alert  # GitHub anchor: #runbook-<alert>
            assert rule["annotations"]["runbook"] == f"docs/OPERATIONS.md#runbook-{alert.lower()}"
