"""Several gateway worker processes (TENSORWASM_GATEWAY_PROCESSES=2) serving TLS, real
processes on a real PostgreSQL: calls over many separate TLS connections are all answered
and both workers serve some; plaintext is refused; with a client CA (mTLS) a client without
a certificate, or with one from another CA, is refused while one signed by the CA is served
by both workers; and a server key pair rotated in place reaches every worker (new
connections verify only against the new CA), as does a rotated client CA, without a
restart; and the workers' HTTP face serves HTTPS only (plain HTTP and a client trusting
another CA are never answered).

Each call runs over a channel of its own (`grpc.use_local_subchannel_pool`: its own TCP
connection and TLS handshake), so the kernel spreads them over the workers (SO_REUSEPORT);
which worker answered is read from each worker's own /metrics. DeleteFunction of a missing
function needs only the registry database."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.local_certs import Authority, Issued, issue, make_authority

from tests.integration.test_gateway_processes import (
    TOKEN,
    Gateway,
    served_by_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.engines]
CALLS = 32
FOUND = "FUNCTION_NOT_FOUND"
REFUSED = "UNAVAILABLE"
_TENANTS = count()


class TlsGateway(Gateway):
    """The supervisor and its two workers on TLS (mTLS with `client_ca`); the HTTP face
    (then HTTPS) only with `http_face`."""

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        served: Issued,
        client_ca: Path | None = None,
        *,
        http_face: bool = False,
    ) -> None:
        env = {
            "TENSORWASM_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0" if http_face else "",
            "TENSORWASM_GATEWAY_TLS_CERT_FILE": str(served.cert_file),
            "TENSORWASM_GATEWAY_TLS_KEY_FILE": str(served.key_file),
        }
        if client_ca is not None:
            env["TENSORWASM_GATEWAY_TLS_CLIENT_CA_FILE"] = str(client_ca)
        super().__init__(tmp_path, database_url, env)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path / "ca")


@pytest.fixture
def served(tmp_path: Path, authority: Authority) -> Issued:
    """The gateway's key pair, signed by `authority`, valid for 127.0.0.1."""
    return issue(authority, "gateway", ["127.0.0.1"], tmp_path / "served")


@pytest.fixture
def tls_gateway(tmp_path: Path, postgres_url: str, served: Issued) -> Iterator[TlsGateway]:
    running = TlsGateway(tmp_path, postgres_url, served)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def mtls_gateway(
    tmp_path: Path, postgres_url: str, authority: Authority, served: Issued
) -> Iterator[TlsGateway]:
    running = TlsGateway(tmp_path, postgres_url, served, client_ca=authority.cert_file)
    try:
        yield running
    finally:
        running.stop()


def trusting(authority: Authority, client: Issued | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials trusting `authority` alone, presenting `client` if given."""
    if client is None:
        return grpc.ssl_channel_credentials(authority.cert_file.read_bytes())
    return grpc.ssl_channel_credentials(
        authority.cert_file.read_bytes(),
        private_key=client.key_file.read_bytes(),
        certificate_chain=client.cert_file.read_bytes(),
    )


def delete_missing(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """DeleteFunction of a missing function over a connection of its own (plaintext when
    `credentials` is None), as a tenant of its own: the ErrorInfo reason of an answer
    (FUNCTION_NOT_FOUND), or the status code of a call never answered (no ErrorInfo: the
    connection was refused)."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel
    channel = (
        grpc.insecure_channel(address, options=options)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=options)
    )
    metadata = (
        ("authorization", f"Bearer {TOKEN}"),
        ("x-tensorwasm-tenant", f"tls-{next(_TENANTS)}"),
    )
    with channel:
        try:
            pb_grpc.GatewayServiceStub(channel).DeleteFunction(
                pb.DeleteFunctionRequest(name="functions/missing"), metadata=metadata, timeout=60
            )
        except grpc.RpcError as exc:
            status = rpc_status.from_call(exc)
            for detail in status.details if status is not None else []:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
            return str(exc.code().name)
    return "OK"


def outcomes(address: str, credentials: grpc.ChannelCredentials | None, calls: int) -> list[str]:
    return [delete_missing(address, credentials) for _ in range(calls)]


def assert_rotated(
    gateway: Gateway,
    accepted: grpc.ChannelCredentials,
    refused: grpc.ChannelCredentials,
    what: str,
) -> None:
    """Once new connections with `accepted` pass (waited for: `what`), CALLS more are all
    served, by both workers, and CALLS with `refused` are all refused, counted by none."""
    address = gateway.ready["grpc_address"]
    wait_for(lambda: outcomes(address, accepted, 8) == [FOUND] * 8, what)
    before = served_by_worker(gateway)
    assert outcomes(address, accepted, CALLS) == [FOUND] * CALLS
    assert_served_by_both(gateway, before, CALLS)
    counted = served_by_worker(gateway)
    assert outcomes(address, refused, CALLS) == [REFUSED] * CALLS
    assert served_by_worker(gateway) == counted


def assert_served_by_both(gateway: Gateway, before: dict[int, int], calls: int) -> None:
    """The last `calls` calls were all answered, some by each of the two workers."""
    after = served_by_worker(gateway)
    assert len(after) == 2 and after.keys() == before.keys(), (before, after)
    assert sum(after.values()) - sum(before.values()) == calls, (before, after)
    assert all(after[pid] > before[pid] for pid in after), (before, after)


@pytest.mark.timeout(600)
def test_tls_calls_over_many_connections_reach_both_workers_and_plaintext_is_refused(
    tls_gateway: TlsGateway, authority: Authority, tmp_path: Path
) -> None:
    address = tls_gateway.ready["grpc_address"]
    assert len(set(tls_gateway.worker_pids())) == 2
    before = served_by_worker(tls_gateway)
    assert outcomes(address, trusting(authority), CALLS) == [FOUND] * CALLS
    assert_served_by_both(tls_gateway, before, CALLS)

    # plaintext, and TLS trusting another CA: refused, never answered by either worker
    stranger = make_authority(tmp_path / "stranger")
    counted = served_by_worker(tls_gateway)
    assert outcomes(address, None, 8) == [REFUSED] * 8
    assert outcomes(address, trusting(stranger), 8) == [REFUSED] * 8
    assert served_by_worker(tls_gateway) == counted


@pytest.mark.timeout(600)
def test_mtls_refuses_clients_without_a_certificate_of_the_ca_and_both_workers_serve_one(
    mtls_gateway: TlsGateway, authority: Authority, tmp_path: Path
) -> None:
    address = mtls_gateway.ready["grpc_address"]
    client = issue(authority, "client", ["localhost"], tmp_path / "client")
    stranger = make_authority(tmp_path / "stranger")
    foreign = issue(stranger, "foreign", ["localhost"], tmp_path / "foreign")
    before = served_by_worker(mtls_gateway)

    # each refused over 8 connections of its own (spread over both workers), never answered
    assert outcomes(address, None, 8) == [REFUSED] * 8
    assert outcomes(address, trusting(authority), 8) == [REFUSED] * 8  # no client certificate
    assert outcomes(address, trusting(authority, foreign), 8) == [REFUSED] * 8
    assert served_by_worker(mtls_gateway) == before

    # a certificate signed by the client CA: served, by both workers
    assert outcomes(address, trusting(authority, client), CALLS) == [FOUND] * CALLS
    assert_served_by_both(mtls_gateway, before, CALLS)


@pytest.mark.timeout(600)
def test_a_rotated_key_pair_and_client_ca_reach_every_worker_without_a_restart(
    mtls_gateway: TlsGateway, authority: Authority, served: Issued, tmp_path: Path
) -> None:
    address = mtls_gateway.ready["grpc_address"]
    workers = mtls_gateway.worker_pids()
    client = issue(authority, "client", ["localhost"], tmp_path / "client")
    old_ca, new_ca = authority, make_authority(tmp_path / "new-ca")
    trusts_old, trusts_new = trusting(old_ca, client), trusting(new_ca, client)
    before = served_by_worker(mtls_gateway)
    assert outcomes(address, trusts_old, CALLS) == [FOUND] * CALLS
    assert_served_by_both(mtls_gateway, before, CALLS)
    assert outcomes(address, trusts_new, 8) == [REFUSED] * 8

    # rotate in place: a pair from another CA over the same two files (the client CA,
    # which signed `client`, stays)
    rotated = issue(new_ca, "gateway", ["127.0.0.1"], served.cert_file.parent)
    assert rotated == served
    # every worker serves the new pair, and none the old one any more
    assert_rotated(
        mtls_gateway, trusts_new, trusts_old, "new connections verify against the new CA"
    )

    # the client CA rotated in place too: only client certificates of the new one pass
    client_ca = make_authority(authority.cert_file.parent)  # over the client CA file
    assert client_ca.cert_file == authority.cert_file
    renewed = issue(client_ca, "client", ["localhost"], tmp_path / "renewed-client")
    trusts_renewed = trusting(new_ca, renewed)
    assert_rotated(  # the old client's certificate refused
        mtls_gateway,
        trusts_renewed,
        trusts_new,
        "client certificates of the new client CA are accepted",
    )
    assert mtls_gateway.worker_pids() == workers  # the same processes: no restart
    assert mtls_gateway.process.poll() is None


def https_delete_missing(address: str, context: ssl.SSLContext) -> int:
    """DELETE /functions/missing on the HTTP face over a connection of its own: the status."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
    try:
        connection.request(
            "DELETE",
            "/functions/missing",
            headers={
                "authorization": f"Bearer {TOKEN}",
                "x-tensorwasm-tenant": f"https-{next(_TENANTS)}",
            },
        )
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


@pytest.mark.timeout(600)
def test_the_http_face_of_the_workers_serves_https_only(
    tmp_path: Path, postgres_url: str, authority: Authority, served: Issued
) -> None:
    gateway = TlsGateway(tmp_path, postgres_url, served, http_face=True)
    try:
        address = gateway.ready["http_address"]
        before = served_by_worker(gateway)
        context = ssl.create_default_context(cafile=str(authority.cert_file))
        # every HTTPS connection (spread over the workers' faces) is answered, through the
        # gRPC side, with the function's 404
        assert [https_delete_missing(address, context) for _ in range(CALLS)] == [404] * CALLS
        after = served_by_worker(gateway)
        assert sum(after.values()) - sum(before.values()) == CALLS, (before, after)
        # plain HTTP on the same port is never answered
        host, port = address.rsplit(":", 1)
        for _ in range(8):
            plain = http.client.HTTPConnection(host, int(port), timeout=60)
            with pytest.raises((http.client.HTTPException, OSError)):
                plain.request("DELETE", "/functions/missing")
                plain.getresponse()
            plain.close()
        # nor is a client that trusts another CA
        stranger = make_authority(tmp_path / "stranger")
        wrong = ssl.create_default_context(cafile=str(stranger.cert_file))
        with pytest.raises(ssl.SSLError):
            https_delete_missing(address, wrong)
        assert served_by_worker(gateway) == after
    finally:
        gateway.stop()
