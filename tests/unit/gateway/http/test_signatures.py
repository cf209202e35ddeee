"""Unit tests for tensorwasm_gateway.http.signatures: the TTL of cached export signatures."""

from __future__ import annotations

from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_gateway.http.signatures import SignatureCache, signature_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _function(digest: str = "d" * 64) -> pb.Function:
    export = values_pb2.ExportedFunction(name="add")
    export.signature.params.extend([values_pb2.VALUE_TYPE_I32, values_pb2.VALUE_TYPE_I32])
    return pb.Function(module_digest=digest, exports=[export])


def test_an_entry_lives_for_the_ttl() -> None:
    clock = Clock()
    cache = SignatureCache(5.0, clock=clock)
    key = signature_key("Bearer t", "acme", "add")
    put = cache.put(key, _function())
    assert put.params == {"add": (values_pb2.VALUE_TYPE_I32, values_pb2.VALUE_TYPE_I32)}
    clock.now += 4.9
    assert cache.get(key) == put
    clock.now += 0.2
    assert cache.get(key) is None


def test_a_zero_ttl_keeps_nothing_and_forget_drops() -> None:
    off = SignatureCache(0.0)
    key = signature_key("", "acme", "add")
    assert off.put(key, _function()).module_digest == "d" * 64
    assert off.get(key) is None
    on = SignatureCache(60.0)
    on.put(key, _function())
    on.forget(key)
    assert on.get(key) is None


def test_credentials_are_hashed_in_the_key() -> None:
    key = signature_key("Bearer secret-token", "acme", "add")
    assert "secret-token" not in repr(key)
    assert key != signature_key("Bearer other", "acme", "add")
