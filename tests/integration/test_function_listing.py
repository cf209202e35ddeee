"""ListFunctions pages through a tenant's functions in name order; tenants never see each other."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm_client.client import GatewayClient, TensorWasmError

pytestmark = pytest.mark.integration

IDS = ["fn-c", "fn-a", "fn-e", "fn-b", "fn-d"]  # deployed out of order


@pytest.fixture
def five(client: GatewayClient, wasm: Callable[[str], bytes]) -> list[str]:
    for function_id in IDS:
        client.create_function(function_id, wasm("add"))
    return [f"functions/{i}" for i in sorted(IDS)]


def test_pages_of_two(client: GatewayClient, five: list[str]) -> None:
    pages, token = [], ""
    while True:
        page = client.list_page(2, token)
        pages.append([f.name for f in page.functions])
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "the token never ran out"

    assert pages == [five[0:2], five[2:4], five[4:5]]


def test_exact_multiple_of_the_page_size_ends_without_an_empty_page(
    client: GatewayClient, five: list[str]
) -> None:
    first = client.list_page(5)
    assert [f.name for f in first.functions] == five
    assert first.next_page_token == ""


def test_default_page_holds_everything_in_order(client: GatewayClient, five: list[str]) -> None:
    assert [f.name for f in client.list_functions()] == five
    assert [f.name for f in client.list_functions(page_size=1)] == five
    every = client.list_page(0)  # 0 means the default size
    assert [f.name for f in every.functions] == five
    assert every.next_page_token == ""


def test_listed_functions_are_complete(client: GatewayClient, five: list[str], tenant: str) -> None:
    listed = client.list_page(1).functions[0]
    assert listed == client.get_function("fn-a")
    assert listed.tenant == tenant
    assert [e.name for e in listed.exports] == ["add"]
    assert listed.create_time.seconds > 0


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "not-a-token",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"after": 5}').decode(),
        base64.urlsafe_b64encode(b'["after"]').decode(),
    ],
)
def test_garbage_page_token(client: GatewayClient, five: list[str], token: str) -> None:
    with pytest.raises(TensorWasmError) as caught:
        client.list_page(2, token)
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")


def test_tenants_are_isolated(stack: Any, tenant: str, wasm: Callable[[str], bytes]) -> None:
    with stack.client(f"{tenant}-a") as a, stack.client(f"{tenant}-b") as b:
        created = a.create_function("shared", wasm("add"))
        assert created.tenant == f"{tenant}-a"

        for call in (
            lambda: b.get_function("shared"),
            lambda: b.invoke("shared", "add", [Value(i32=1), Value(i32=2)]),
            lambda: b.delete_function("shared"),
        ):
            with pytest.raises(TensorWasmError) as caught:
                call()
            assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "FUNCTION_NOT_FOUND")
        assert list(b.list_functions()) == []

        # b may use the same id for its own, different module; a's is untouched.
        b.create_function("shared", wasm("numeric"))
        assert a.get_function("shared") == created
        assert b.get_function("shared").module_digest != created.module_digest
        assert list(
            a.invoke("shared", "add", [Value(i32=1), Value(i32=2)]).outcome.success.results
        ) == [Value(i32=3)]
        assert list(b.invoke("shared", "id_i32", [Value(i32=9)]).outcome.success.results) == [
            Value(i32=9)
        ]
        b.delete_function("shared")
        assert a.get_function("shared") == created


def test_the_default_tenant_is_its_own(
    stack: Any, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    with stack.client(tenant) as named, stack.client() as default:
        named.create_function("only-named", wasm("add"))
        with pytest.raises(TensorWasmError) as caught:
            default.get_function("only-named")
        assert caught.value.reason == "FUNCTION_NOT_FOUND"
        assert "functions/only-named" not in [f.name for f in default.list_functions()]
