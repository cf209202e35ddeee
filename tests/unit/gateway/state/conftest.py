"""The gateway's stores on each engine in turn (SQLite, PostgreSQL): `registry` on a fresh
database, and `open_registry` for a second gateway's view of the same database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tensorwasm_common.database import parse_database_url
from tensorwasm_gateway.functions import Registry
from tensorwasm_gateway.state import open_database
from tensorwasm_gateway.state.open import SETTING


@pytest.fixture
def open_registry(database_url: str) -> Iterator[Callable[[], Registry]]:
    """Opens another Registry (another gateway) on the test's database."""
    opened: list[Registry] = []

    def open_one() -> Registry:
        registry = Registry(open_database(parse_database_url(database_url, SETTING)))
        opened.append(registry)
        return registry

    yield open_one
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(open_registry: Callable[[], Registry]) -> Registry:
    """A Registry on a fresh database of the engine under test."""
    return open_registry()
