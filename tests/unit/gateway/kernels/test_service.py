"""KernelService's publish path against a real SQLite catalogue and a stand-in for the
snapshot store: the order of the checks, and nothing kept when the store fails."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import blake3
import pytest
from tensorwasm_common.errors import UnavailableError
from tensorwasm_gateway.errors import (
    KernelPublishScopeRequiredError,
    KernelRegistryNotConfiguredError,
    KernelRegistryStorageError,
)
from tensorwasm_gateway.kernels import (
    KernelCatalog,
    KernelPublication,
    KernelService,
    Publisher,
    signing,
)
from tensorwasm_gateway.state import open_database

KEY = bytes(range(32))
PTX = b".visible .entry k()\n{\n}\n"


class _Store:
    """Stands in for the snapshot store's record API (this module's only collaborator)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.created: list[tuple[Any, ...]] = []

    async def create_snapshot(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            raise UnavailableError("store down")
        self.created.append(args)


def _publication(**changes: Any) -> KernelPublication:
    digest = blake3.blake3(PTX).digest()
    fields: dict[str, Any] = {
        "name": "k", "version": "1.0.0", "sm_version": 80, "digest": digest,
        "signature": signing.sign(KEY, "k", "1.0.0", 80, digest), "ptx": PTX,
    }  # fmt: skip
    fields.update(changes)
    return KernelPublication(**fields)


def _service(tmp_path: Path, store: _Store, key: bytes | None = KEY) -> KernelService:
    catalog = KernelCatalog(open_database(tmp_path / "gateway.sqlite3"))
    return KernelService(catalog, store, key)  # type: ignore[arg-type]


PUBLISHER = Publisher("ta", "tok_1", may_publish_shared=True)


def test_scope_is_checked_before_the_key(tmp_path: Path) -> None:
    service = _service(tmp_path, _Store(), key=None)
    tenant_only = Publisher("ta", "tok_2", may_publish_shared=False)
    with pytest.raises(KernelPublishScopeRequiredError):
        asyncio.run(service.publish(tenant_only, _publication()))
    with pytest.raises(KernelRegistryNotConfiguredError):
        asyncio.run(service.publish(PUBLISHER, _publication()))


def test_a_store_failure_keeps_no_manifest(tmp_path: Path) -> None:
    store = _Store(fail=True)
    service = _service(tmp_path, store)
    with pytest.raises(KernelRegistryStorageError):
        asyncio.run(service.publish(PUBLISHER, _publication()))
    assert asyncio.run(service.list_page("ta", 0, 10)) == []
    store.fail = False  # the name@version is free again
    record = asyncio.run(service.publish(PUBLISHER, _publication()))
    assert (record.namespace, record.entry, record.key_id) == ("", "k", signing.key_id(KEY))
    assert len(store.created) == 1


def test_a_private_kernel_lives_in_the_tenants_namespace(tmp_path: Path) -> None:
    service = _service(tmp_path, _Store())
    tenant_only = Publisher("ta", "tok_2", may_publish_shared=False)
    record = asyncio.run(service.publish(tenant_only, _publication(private=True)))
    assert record.namespace == "ta" and not record.shared
    assert asyncio.run(service.list_page("tb", 0, 10)) == []
