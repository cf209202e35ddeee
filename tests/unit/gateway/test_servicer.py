"""Unit tests for tensorwasm_gateway.servicer: page tokens, the tenant, wire conversion."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.channels import TENANT_METADATA_KEY
from tensorwasm_common.errors import Code, InvalidNameError, InvalidPageTokenError
from tensorwasm_common.tenants import DEFAULT_TENANT
from tensorwasm_gateway.calls import AddressedCall, CallResult
from tensorwasm_gateway.errors import FunctionNotFoundError
from tensorwasm_gateway.functions.registry import ExportRecord, FunctionRecord, Registry
from tensorwasm_gateway.functions.service import FunctionService
from tensorwasm_gateway.routing.executors import invoke_request
from tensorwasm_gateway.servicer import (
    DEFAULT_PAGE_SIZE,
    GatewayServicer,
    decode_page_token,
    encode_page_token,
    function_to_wire,
    tenant_of,
)
from tensorwasm_gateway.wire import FUNCTION_CONFIGS

DIGEST = "cd" * 32


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicer reads."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]] | None = ()) -> None:
        self._metadata = None if metadata is None else tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...] | None:
        return self._metadata


class FakeExecutors:
    def __init__(self) -> None:
        self.invoked: list[executor_pb.InvokeRequest] = []

    async def prepare(self, digest: str, **_options: object) -> executor_pb.PrepareModuleResponse:
        raise AssertionError("not used")

    async def invoke(self, call: AddressedCall) -> CallResult:
        self.invoked.append(invoke_request(call))  # what the executor would receive
        outcome = invocation_pb2.InvocationOutcome(
            success=invocation_pb2.InvocationSuccess(results=[values_pb2.Value(i64=-5)]),
            stderr=b"warn",
        )
        return CallResult(outcome, succeeded=True)


class UnusedStore:
    async def put(self, data: bytes, **options: object) -> object:
        raise AssertionError("not used")

    async def remove_ref(self, digest: str, ref_name: str, **options: object) -> bool:
        return True  # deleting a function drops its reference


# --- page tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("last_id", ["a", "fn-001", "z" * 63, "ünïcode", 'with"quote'])
def test_page_token_round_trip(last_id: str) -> None:
    token = encode_page_token(last_id)
    assert isinstance(token, str)
    assert token.isascii()
    assert decode_page_token(token) == last_id


def test_page_token_is_opaque_urlsafe_base64_json() -> None:
    token = encode_page_token("fn-9")
    assert json.loads(base64.urlsafe_b64decode(token)) == {"after": "fn-9"}
    assert "+" not in token and "/" not in token


def test_empty_token_starts_at_the_beginning() -> None:
    assert decode_page_token("") == ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "abc",
        "!!!!",
        "%%%%====",
        _b64(b"not json"),
        _b64(b"\xff\xfe\xfd"),
        _b64(b"[1, 2]"),
        _b64(b"null"),
        _b64(b'"after"'),
        _b64(b'{"before": "x"}'),
        _b64(b'{"after": 5}'),
        _b64(b'{"after": null}'),
        _b64(b'{"after": ["a"]}'),
    ],
)
def test_garbage_token_is_invalid(token: str) -> None:
    with pytest.raises(InvalidPageTokenError) as caught:
        decode_page_token(token)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


def test_deeply_nested_token_is_invalid() -> None:
    with pytest.raises(InvalidPageTokenError):
        decode_page_token(_b64(b"[" * 100_000))


# --- tenant ----------------------------------------------------------------------------------


def test_tenant_from_metadata() -> None:
    context: Any = FakeContext([("user-agent", "x"), (TENANT_METADATA_KEY, "acme")])
    assert tenant_of(context) == "acme"


def test_default_tenant_without_metadata() -> None:
    assert DEFAULT_TENANT == "default"
    assert tenant_of(FakeContext([("other", "acme")])) == "default"  # type: ignore[arg-type]
    assert tenant_of(FakeContext([])) == "default"  # type: ignore[arg-type]
    assert tenant_of(FakeContext(None)) == "default"  # type: ignore[arg-type]


def test_first_tenant_entry_wins() -> None:
    context: Any = FakeContext([(TENANT_METADATA_KEY, "first"), (TENANT_METADATA_KEY, "second")])
    assert tenant_of(context) == "first"


@pytest.mark.parametrize("tenant", ["", "Acme", "../etc", "a" * 64, "-x"])
def test_invalid_tenant_is_rejected(tenant: str) -> None:
    context: Any = FakeContext([(TENANT_METADATA_KEY, tenant)])
    with pytest.raises(InvalidNameError) as caught:
        tenant_of(context)
    assert caught.value.reason == "INVALID_NAME"
    assert caught.value.metadata == {"tenant": tenant}


# --- wire conversion ---------------------------------------------------------------------------


def test_function_to_wire() -> None:
    record = FunctionRecord(
        "acme",
        "adder",
        DIGEST,
        4321,
        (
            ExportRecord("add", ("i32", "i64"), ("f32",)),
            ExportRecord("mix", ("f64", "v128", "funcref"), ("externref", "bogus")),
        ),
        1_700_000_000_123_456_789,
    )
    function = function_to_wire(record)
    assert function.name == "functions/adder"
    assert function.tenant == "acme"
    assert function.module_digest == DIGEST
    assert function.module_size_bytes == 4321
    assert function.create_time.seconds == 1_700_000_000
    assert function.create_time.nanos == 123_456_789
    assert [e.name for e in function.exports] == ["add", "mix"]
    assert list(function.exports[0].signature.params) == [
        values_pb2.VALUE_TYPE_I32,
        values_pb2.VALUE_TYPE_I64,
    ]
    assert list(function.exports[0].signature.results) == [values_pb2.VALUE_TYPE_F32]
    assert list(function.exports[1].signature.params) == [
        values_pb2.VALUE_TYPE_F64,
        values_pb2.VALUE_TYPE_V128,
        values_pb2.VALUE_TYPE_FUNCREF,
    ]
    assert list(function.exports[1].signature.results) == [
        values_pb2.VALUE_TYPE_EXTERNREF,
        values_pb2.VALUE_TYPE_UNSPECIFIED,
    ]


# --- the servicer over a real registry ---------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite3")
    yield reg
    reg.close()


def _servicer(registry: Registry, executors: FakeExecutors | None = None) -> GatewayServicer:
    pool: Any = executors or FakeExecutors()
    return GatewayServicer(
        FunctionService(
            registry, UnusedStore(), pool, max_module_bytes=1024, configs=FUNCTION_CONFIGS
        )
    )


def _insert(registry: Registry, tenant: str, *ids: str) -> None:
    for function_id in ids:
        registry.insert(
            FunctionRecord(tenant, function_id, DIGEST, 8, (ExportRecord("main", (), ("i64",)),), 1)
        )


def _context(tenant: str | None = None) -> Any:
    return FakeContext([] if tenant is None else [(TENANT_METADATA_KEY, tenant)])


def _list_all(servicer: GatewayServicer, page_size: int, tenant: str | None) -> list[list[str]]:
    async def scenario() -> list[list[str]]:
        pages: list[list[str]] = []
        token = ""
        while True:
            response = await servicer.ListFunctions(
                pb.ListFunctionsRequest(page_size=page_size, page_token=token), _context(tenant)
            )
            pages.append([f.name for f in response.functions])
            token = response.next_page_token
            if not token:
                return pages

    return asyncio.run(scenario())


def test_list_functions_pages(registry: Registry) -> None:
    _insert(registry, "acme", "e", "a", "d", "c", "b")
    _insert(registry, DEFAULT_TENANT, "z")
    pages = _list_all(_servicer(registry), 2, "acme")
    assert pages == [
        ["functions/a", "functions/b"],
        ["functions/c", "functions/d"],
        ["functions/e"],
    ]
    assert _list_all(_servicer(registry), 2, None) == [["functions/z"]]


def test_list_functions_exact_page_has_no_token(registry: Registry) -> None:
    _insert(registry, "acme", "a", "b")
    assert _list_all(_servicer(registry), 2, "acme") == [["functions/a", "functions/b"]]


@pytest.mark.parametrize("page_size", [0, -3])
def test_list_functions_default_page_size(registry: Registry, page_size: int) -> None:
    ids = [f"fn-{i:03d}" for i in range(DEFAULT_PAGE_SIZE + 1)]
    _insert(registry, "acme", *ids)
    pages = _list_all(_servicer(registry), page_size, "acme")
    assert [len(p) for p in pages] == [DEFAULT_PAGE_SIZE, 1]


def test_list_functions_bad_token(registry: Registry) -> None:
    with pytest.raises(InvalidPageTokenError):
        asyncio.run(
            _servicer(registry).ListFunctions(
                pb.ListFunctionsRequest(page_token="garbage"), _context()
            )
        )


def test_get_and_delete_function_are_tenant_scoped(registry: Registry) -> None:
    _insert(registry, "acme", "adder")
    servicer = _servicer(registry)

    async def scenario() -> None:
        got = await servicer.GetFunction(
            pb.GetFunctionRequest(name="functions/adder"), _context("acme")
        )
        assert got.function.name == "functions/adder"
        assert got.function.tenant == "acme"
        with pytest.raises(FunctionNotFoundError):
            await servicer.GetFunction(pb.GetFunctionRequest(name="functions/adder"), _context())
        with pytest.raises(InvalidNameError):
            await servicer.GetFunction(pb.GetFunctionRequest(name="adder"), _context("acme"))
        with pytest.raises(FunctionNotFoundError):
            await servicer.DeleteFunction(
                pb.DeleteFunctionRequest(name="functions/adder"), _context("globex")
            )
        reply = await servicer.DeleteFunction(
            pb.DeleteFunctionRequest(name="functions/adder"), _context("acme")
        )
        assert reply == pb.DeleteFunctionResponse()

    asyncio.run(scenario())
    assert not registry.exists("acme", "adder")


def test_invoke_forwards_the_request(registry: Registry) -> None:
    _insert(registry, "acme", "adder")
    executors = FakeExecutors()
    servicer = _servicer(registry, executors)
    request = pb.InvokeRequest(
        name="functions/adder",
        args=[values_pb2.Value(i32=3), values_pb2.Value(f64_bits=0x3FF0000000000000)],
        stdin=b"input",
        limits=invocation_pb2.InvocationLimits(max_output_bytes=99),
    )
    response = asyncio.run(servicer.Invoke(request, _context("acme")))
    assert response.export_name == "main"
    assert list(response.outcome.success.results) == [values_pb2.Value(i64=-5)]
    assert response.outcome.stderr == b"warn"
    (sent,) = executors.invoked
    assert sent.module_digest == DIGEST
    assert sent.export_name == "main"
    assert sent.tenant == "acme"
    assert list(sent.args) == list(request.args)
    assert sent.stdin == b"input"
    assert sent.limits.max_output_bytes == 99
    assert not sent.limits.HasField("timeout")
