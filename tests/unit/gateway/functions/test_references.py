"""Unit tests for tensorwasm_gateway.functions.references: a failed deploy or a delete
releases its module reference, and a release the store cannot take (an outage) is
recorded and sent once the store is back, unless the reference is live again by then."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorwasm_common.errors import InvalidWasmError, UnavailableError
from tensorwasm_gateway.functions.registry import Registry
from tensorwasm_gateway.functions.service import FunctionService
from tensorwasm_gateway.wire import FUNCTION_CONFIGS

from .test_service import WASM, WASM_DIGEST, FakeExecutors, FakeStore

REFERENCE = ("acme", WASM_DIGEST, "functions/adder")


class FlakyStore(FakeStore):
    """A FakeStore that can be down: every call then fails UNAVAILABLE."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def put(self, data: bytes, **options: object) -> object:
        if self.down:
            raise UnavailableError("snapshot store is unavailable")
        return await super().put(data, **options)  # type: ignore[arg-type]

    async def remove_ref(self, digest: str, ref_name: str, *, tenant: str | None = None) -> bool:
        if self.down:
            raise UnavailableError("snapshot store is unavailable")
        return await super().remove_ref(digest, ref_name, tenant=tenant)


class GoesDownOnPrepare(FakeExecutors):
    """An executor whose compile fails because the store went away meanwhile."""

    def __init__(self, store: FlakyStore) -> None:
        super().__init__(prepare_error=UnavailableError("module fetch failed"))
        self.store = store

    async def prepare(self, digest: str, **options: object) -> object:  # type: ignore[override]
        self.store.down = True
        return await super().prepare(digest, **options)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite3")
    yield reg
    reg.close()


def _service(registry: Registry, store: FakeStore, executors: FakeExecutors) -> FunctionService:
    return FunctionService(
        registry, store, executors, max_module_bytes=1 << 20, configs=FUNCTION_CONFIGS
    )


def test_a_failed_compile_releases_the_reference(registry: Registry) -> None:
    store = FlakyStore()
    service = _service(registry, store, FakeExecutors(prepare_error=InvalidWasmError("bad")))
    with pytest.raises(InvalidWasmError):
        asyncio.run(service.create("acme", "adder", WASM))
    assert store.puts == [(WASM, WASM_DIGEST)]  # it was stored (and referenced) first
    assert store.refs == set()
    assert service.references.pending() == []


def test_a_release_during_a_store_outage_is_sent_when_the_store_returns(
    registry: Registry,
) -> None:
    store = FlakyStore()
    service = _service(registry, store, GoesDownOnPrepare(store))

    async def scenario() -> None:
        with pytest.raises(UnavailableError):
            await service.create("acme", "adder", WASM)
        assert store.refs == {REFERENCE}  # the store could not take the release
        assert service.references.pending() == [REFERENCE]  # kept durably
        assert await service.references.retry_pending() == 0  # still down: kept
        assert service.references.pending() == [REFERENCE]
        store.down = False
        assert await service.references.retry_pending() == 1
        assert store.refs == set()
        assert service.references.pending() == []

    asyncio.run(scenario())


def test_a_recorded_release_survives_a_restart(registry: Registry, tmp_path: Path) -> None:
    store = FlakyStore()
    asyncio.run(_create_failing(_service(registry, store, GoesDownOnPrepare(store))))
    registry.close()
    reopened = Registry(tmp_path / "registry.sqlite3")
    try:
        store.down = False
        service = _service(reopened, store, FakeExecutors())
        assert asyncio.run(service.references.retry_pending()) == 1
        assert store.refs == set()
    finally:
        reopened.close()


async def _create_failing(service: FunctionService) -> None:
    with pytest.raises(UnavailableError):
        await service.create("acme", "adder", WASM)


def test_a_redeploy_adopts_the_recorded_release_of_its_reference(registry: Registry) -> None:
    store = FlakyStore()
    failing = _service(registry, store, GoesDownOnPrepare(store))

    async def scenario() -> None:
        await _create_failing(failing)
        store.down = False
        service = _service(registry, store, FakeExecutors())
        record = await service.create("acme", "adder", WASM)  # the same id and module
        assert service.references.pending() == []
        assert await service.references.retry_pending() == 0
        assert store.refs == {REFERENCE}  # the live function keeps its reference
        assert record.module_digest == WASM_DIGEST

    asyncio.run(scenario())


def test_a_release_of_a_live_reference_is_dropped_not_sent(registry: Registry) -> None:
    store = FlakyStore()
    service = _service(registry, store, FakeExecutors())

    async def scenario() -> None:
        await service.create("acme", "adder", WASM)
        store.down = True
        await service.references.release(*REFERENCE)  # e.g. recorded by another gateway
        store.down = False
        assert await service.references.retry_pending() == 1  # settled: dropped
        assert store.refs == {REFERENCE}

    asyncio.run(scenario())


def test_a_delete_during_a_store_outage_releases_later(registry: Registry) -> None:
    store = FlakyStore()
    service = _service(registry, store, FakeExecutors())

    async def scenario() -> None:
        await service.create("acme", "adder", WASM)
        store.down = True
        await service.delete("acme", "adder")
        assert service.references.pending() == [REFERENCE]
        store.down = False
        assert await service.references.retry_pending() == 1
        assert store.refs == set()

    asyncio.run(scenario())
