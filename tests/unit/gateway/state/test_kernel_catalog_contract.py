"""The kernel registry's manifests (migration 4's `kernels` table), the same on SQLite and
PostgreSQL: one name@version per namespace, a tenant's own namespace before the shared
catalogue, pages in (name, version, namespace) order."""

from __future__ import annotations

import dataclasses

import pytest
from tensorwasm_common.database import parse_database_url, schema_version
from tensorwasm_gateway.errors import KernelAlreadyExistsError
from tensorwasm_gateway.kernels import SHARED_NAMESPACE, KernelCatalog, KernelRecord
from tensorwasm_gateway.state import open_database
from tensorwasm_gateway.state.migrations import COMPONENT
from tensorwasm_gateway.state.open import SETTING


@pytest.fixture
def catalog(database_url: str) -> KernelCatalog:
    return KernelCatalog(open_database(parse_database_url(database_url, SETTING)))


def _kernel(name: str, version: str = "1.0.0", namespace: str = SHARED_NAMESPACE) -> KernelRecord:
    return KernelRecord(
        namespace=namespace,
        name=name,
        version=version,
        sm_version=80,
        digest=bytes(range(32)),
        signature=bytes(range(32, 64)),
        key_id="0123456789abcdef",
        entry="vector_add",
        publisher="tok_0000000000000000",
        ptx_size_bytes=1234,
        publish_time_ns=1_700_000_000_000_000_001,
    )


def test_the_schema_is_at_version_4(catalog: KernelCatalog) -> None:
    assert schema_version(catalog.database, COMPONENT) >= 4


def test_a_manifest_round_trips_and_a_duplicate_is_refused(catalog: KernelCatalog) -> None:
    catalog.insert(_kernel("vadd"))
    assert catalog.find("anyone", "vadd", "1.0.0") == _kernel("vadd")
    assert catalog.exists(SHARED_NAMESPACE, "vadd", "1.0.0")
    with pytest.raises(KernelAlreadyExistsError) as caught:
        catalog.insert(dataclasses.replace(_kernel("vadd"), sm_version=90))
    assert caught.value.metadata == {"name": "vadd", "version": "1.0.0", "namespace": ""}
    assert catalog.find("anyone", "vadd", "1.0.0") == _kernel("vadd")  # the first stands
    assert catalog.find("anyone", "vadd", "1.0.1") is None


def test_a_tenant_sees_its_own_namespace_first_and_no_other_tenants(
    catalog: KernelCatalog,
) -> None:
    catalog.insert(_kernel("vadd"))
    catalog.insert(dataclasses.replace(_kernel("vadd", namespace="ta"), sm_version=75))
    catalog.insert(_kernel("private", namespace="ta"))
    own = catalog.find("ta", "vadd", "1.0.0")
    assert own is not None and (own.namespace, own.sm_version) == ("ta", 75)
    shared = catalog.find("tb", "vadd", "1.0.0")
    assert shared is not None and shared.shared
    assert catalog.find("tb", "private", "1.0.0") is None
    assert [(k.name, k.namespace) for k in catalog.list_page("ta", 0, 10)] == [
        ("private", "ta"), ("vadd", ""), ("vadd", "ta"),
    ]  # fmt: skip
    assert [(k.name, k.namespace) for k in catalog.list_page("tb", 0, 10)] == [("vadd", "")]


def test_pages_follow_name_then_version(catalog: KernelCatalog) -> None:
    for name, version in (("b", "1.0.0"), ("a", "2.0.0"), ("a", "1.0.0"), ("c", "0.1.0")):
        catalog.insert(_kernel(name, version))
    refs = [(k.name, k.version) for k in catalog.list_page("t", 0, 10)]
    assert refs == [("a", "1.0.0"), ("a", "2.0.0"), ("b", "1.0.0"), ("c", "0.1.0")]
    assert [(k.name, k.version) for k in catalog.list_page("t", 1, 2)] == refs[1:3]
    assert catalog.list_page("t", 4, 10) == []


def test_delete_removes_only_that_row(catalog: KernelCatalog) -> None:
    catalog.insert(_kernel("vadd"))
    catalog.insert(_kernel("vadd", namespace="ta"))
    catalog.delete(SHARED_NAMESPACE, "vadd", "1.0.0")
    assert not catalog.exists(SHARED_NAMESPACE, "vadd", "1.0.0")
    assert catalog.exists("ta", "vadd", "1.0.0")
