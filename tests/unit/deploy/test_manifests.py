"""The kustomize manifests, rendered (`make k8s-lint` validates them): every setting a real
one, every pod locked down and probed on its health port, the gpu overlay's dispatcher on
GPU nodes, and a manifest that fails validation fails the check."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tensorwasm_common.settings import ServerSettings
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_gateway.settings import GatewaySettings
from tensorwasm_jit.settings import JitSettings
from tensorwasm_snapshot.settings import SnapshotSettings

from tools.check_manifests import OVERLAYS, check, render

ROOT = Path(__file__).resolve().parents[3]
SETTINGS: dict[str, type[ServerSettings]] = {
    "gateway": GatewaySettings,
    "executor": ExecutorSettings,
    "dispatcher": DispatcherSettings,
    "snapshot": SnapshotSettings,
    "jit": JitSettings,
}
FLEET_SETTINGS = {
    "TENSORWASM_SERVICE_TOKEN_FILE",
    "TENSORWASM_TLS_CA_FILE",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "PYTHONUNBUFFERED",
}
HEALTH_PORT, METRICS_PORT = 8086, 9464


def _kubectl() -> str:
    kubectl = os.environ.get("TENSORWASM_KUBECTL") or str(ROOT / ".tools/kubectl/bin/kubectl")
    if not Path(kubectl).exists():
        pytest.fail(f"kubectl not found at {kubectl}: run `make k8s-tools`")
    return kubectl


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    return {
        overlay: list(yaml.safe_load_all(render(kubectl, OVERLAYS / overlay)))
        for overlay in ("dev", "prod", "gpu")
    }


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def test_a_manifest_that_fails_validation_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", copy)
    jit = copy / "base" / "jit.yaml"
    jit.write_text(jit.read_text().replace("  revisionHistoryLimit: 5\n", "  replica: 2\n", 1))
    problems = check(_kubectl(), [copy / "overlays" / "prod"], "1.33.0")
    assert len(problems) == 1
    assert "deployment/tensorwasm-jit" in problems[0] and "'replica' was unexpected" in problems[0]


def test_every_setting_in_the_config_maps_is_a_real_one(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        for config_map in _of(docs, "ConfigMap"):
            service = config_map["metadata"]["name"].removeprefix("tensorwasm-")
            for key in config_map["data"]:
                if service == "common":
                    assert key in FLEET_SETTINGS, (overlay, key)
                    continue
                prefix = f"TENSORWASM_{service.upper()}_"
                assert key.startswith(prefix), (overlay, key)
                fields = {f.name for f in dataclasses.fields(SETTINGS[service])}
                field = key.removeprefix(prefix).lower()
                assert field in fields, (overlay, key)


def test_pods_are_locked_down_and_probed_on_their_fixed_ports(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        settings = {cm["metadata"]["name"]: cm["data"] for cm in _of(docs, "ConfigMap")}
        workloads = _workloads(docs)
        assert {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                for w in workloads} == set(SETTINGS), overlay  # fmt: skip
        for workload in workloads:
            pod = workload["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            (container,) = pod["containers"]
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            env = settings[f"tensorwasm-{container['name']}"]
            prefix = f"TENSORWASM_{container['name'].upper()}_"
            assert env[prefix + "LISTEN_ADDRESS"] == f"0.0.0.0:{ports['grpc']}"
            assert env[prefix + "METRICS_ADDRESS"] == f"0.0.0.0:{ports['metrics']}"
            assert env[prefix + "HEALTH_ADDRESS"] == f"0.0.0.0:{ports['health']}"
            assert (ports["metrics"], ports["health"]) == (METRICS_PORT, HEALTH_PORT)
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"] == {"port": HEALTH_PORT}, (overlay, probe)
            assert env[prefix + "TLS_CERT_FILE"].startswith("/etc/tensorwasm/tls/")


def test_the_gpu_overlay_runs_one_dispatcher_per_gpu_node(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    gpu = rendered["gpu"]
    (daemon_set,) = _of(gpu, "DaemonSet")
    pod = daemon_set["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "tensorwasm-dispatcher" not in {d["metadata"]["name"] for d in _of(gpu, "Deployment")}
    config = {cm["metadata"]["name"]: cm["data"] for cm in _of(gpu, "ConfigMap")}
    assert config["tensorwasm-dispatcher"]["TENSORWASM_DISPATCHER_BACKEND"] == "cuda"
    (dispatcher_service,) = [
        s for s in _of(gpu, "Service") if s["metadata"]["name"] == "tensorwasm-dispatcher"
    ]
    assert dispatcher_service["spec"]["internalTrafficPolicy"] == "Local"
    assert not _of(rendered["prod"], "DaemonSet")


def test_only_the_gateway_is_reachable_from_outside(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        open_rules = []
        for policy in _of(docs, "NetworkPolicy"):
            for rule in policy["spec"].get("ingress", []):
                ports = {p["port"] for p in rule.get("ports", [])}
                if "from" not in rule and ports - {"health"}:
                    open_rules.append((policy["spec"]["podSelector"], ports))
        assert open_rules == [
            ({"matchLabels": {"app.kubernetes.io/name": "gateway"}}, {"grpc", "https"})
        ], overlay
        (executors,) = [
            s for s in _of(docs, "Service") if s["metadata"]["name"] == "tensorwasm-executor"
        ]
        assert executors["spec"]["clusterIP"] == "None"
        hpas = {h["spec"]["scaleTargetRef"]["name"] for h in _of(docs, "HorizontalPodAutoscaler")}
        assert hpas == {"tensorwasm-gateway", "tensorwasm-executor"}
