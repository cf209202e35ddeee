"""Group `tenant_registry`: the gateway's function lookup and tenant check at 10,000
functions over 1,000 tenants, on SQLite and on PostgreSQL, in process.

The registry (`functions/registry.py`) holds 10,000 function rows, 10 per tenant for 1,000
tenants; the guard (`access/guard.py`) holds 1,000 bearer tokens, each scoped to one
tenant. Every sample uses the next (tenant, function) of a fixed shuffled cycle over all
10,000, so no sample reads the row the previous one did. Subjects:

- `tenant_registry/lookup/sqlite`: `Registry.lookup`, what Invoke's resolve runs inline on
  SQLite (a primary-key read on the registry's own reader connection, the record built);
- `tenant_registry/lookup/postgres`: `Registry.lookup` on PostgreSQL, answered from the
  NOTIFY-invalidated cache (all 10,000 loaded first, as a busy gateway has them);
- `tenant_registry/read/postgres`: `Registry.get`, the database read a cache miss costs
  (`Registry.load` is that read plus a cache put);
- `tenant_registry/tenant_check/{sqlite,postgres}`: the guard's admission of an Invoke:
  `Guard.authenticate` (bearer token among 1,000), `Guard.tenant_of`
  (`x-tensorwasm-tenant`), `Guard.authorize` (scope, then the rate-limit buckets: in
  memory for a gateway on SQLite, shared on the PostgreSQL database with grants). The
  limits are set high enough never to refuse; every tenant's buckets are warmed first.

Anchors, same run: `sqlite/select_pk` and `postgres/select_pk` (the same SELECT on a bare
sqlite3 / psycopg connection to the same database: the engine's floor), `python/dict_get`
(a dict of the 10,000 records: the floor of an in-memory lookup) and `python/token_dict`
(SHA-256 of the token, a dict lookup of its digest, the tenant in its scope: the floor of
an in-memory tenant check). The same sizes with --quick (only the sample count changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from tensorwasm_common.database import parse_database_url
from tensorwasm_gateway.access.audit import AuditLog
from tensorwasm_gateway.access.guard import Guard
from tensorwasm_gateway.access.policies import GATEWAY_POLICIES
from tensorwasm_gateway.access.ratelimit import BucketConfig, ConcurrencyCaps
from tensorwasm_gateway.access.shared_limits import limiter_for
from tensorwasm_gateway.access.tokens import Scope, TokenStore
from tensorwasm_gateway.functions.registry import FunctionRecord, Registry
from tensorwasm_gateway.state.open import SETTING, open_database

from tests.bench.harness import Benchmark, RunConfig, group
from tests.engines.postgres import PostgresServer, postgres_bin_dir

TENANTS = 1_000
FUNCTIONS_PER_TENANT = 10
SEED = 20261207
SELECT = "SELECT * FROM functions WHERE tenant = ? AND function_id = ?"
INVOKE = "/tensorwasm.gateway.v1.GatewayService/Invoke"
NEVER_REFUSE = BucketConfig(qps=1e9, burst=1_000_000_000)
Key = tuple[str, str]


def _keys() -> list[Key]:
    """Every (tenant, function_id), in a fixed shuffled order."""
    keys = [
        (f"tenant-{t:04d}", f"fn-{f:02d}")
        for t in range(TENANTS)
        for f in range(FUNCTIONS_PER_TENANT)
    ]
    random.Random(SEED).shuffle(keys)
    return keys


def _token(tenant: str) -> str:
    return f"bench-{hashlib.sha256(tenant.encode()).hexdigest()[:32]}"


def _fill(registry: Registry, keys: Sequence[Key]) -> None:
    """The function rows, in one transaction, with the statement `Registry.insert` runs."""
    exports = json.dumps([{"name": "run", "params": ["i32"], "results": ["i32"]}])
    rows = [
        (tenant, function_id, hashlib.blake2b(function_id.encode()).hexdigest(), 1024, exports,
         1_700_000_000_000_000_000, b"")
        for tenant, function_id in keys
    ]  # fmt: skip
    with registry.database.transaction() as session:
        session.executemany("INSERT INTO functions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def _cycling(keys: Sequence[Key], fn: Callable[[str, str], object]) -> Callable[[], None]:
    """A benchmark callable: `fn` of the next key of its own cycle; fails on a miss."""
    cycle = itertools.cycle(keys)

    def run() -> None:
        if fn(*next(cycle)) is None:
            raise RuntimeError("a lookup of a stored function found nothing")

    return run


def _guard(registry: Registry) -> Guard:
    """The gateway's guard over 1,000 single-tenant tokens and the engine's limiter."""
    tenants = sorted({f"tenant-{t:04d}" for t in range(TENANTS)})
    tokens = TokenStore([(_token(t), Scope(tenants=frozenset({t}))) for t in tenants])
    limiter = limiter_for(registry.database, NEVER_REFUSE, NEVER_REFUSE)
    return Guard(tokens, limiter, ConcurrencyCaps({}), AuditLog(None))


def _tenant_check(
    guard: Guard, keys: Sequence[Key], loop: asyncio.AbstractEventLoop
) -> Callable[[], None]:
    """Admits an Invoke of the next key's tenant with its token, as the guard does; a
    decision the limiter defers (a grant to draw from PostgreSQL, on a worker thread) is
    awaited on `loop`, so a sample is the whole admission."""
    policy = GATEWAY_POLICIES.of(INVOKE)
    metadata = {
        tenant: (("authorization", f"Bearer {_token(tenant)}"), ("x-tensorwasm-tenant", tenant))
        for tenant, _ in keys
    }
    cycle = itertools.cycle(keys)

    def run() -> None:
        tenant = next(cycle)[0]
        call = metadata[tenant]
        principal = guard.authenticate(call, "127.0.0.1")
        pending = guard.authorize(policy, principal, Guard.tenant_of(principal, call))
        if pending is not None:
            loop.run_until_complete(pending)

    return run


def _token_dict(keys: Sequence[Key]) -> Callable[[], None]:
    """The floor of a tenant check: hash the token, find its scope, test the tenant."""
    scopes = {
        hashlib.sha256(_token(t).encode()).digest(): frozenset({t}) for t in {k[0] for k in keys}
    }
    tokens = {tenant: _token(tenant) for tenant, _ in keys}
    cycle = itertools.cycle(keys)

    def run() -> None:
        tenant = next(cycle)[0]
        scope = scopes.get(hashlib.sha256(tokens[tenant].encode()).digest())
        if scope is None or tenant not in scope:
            raise RuntimeError("the token does not cover its tenant")

    return run


def _sqlite_select(path: Path) -> Callable[[str, str], Any]:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    return lambda tenant, function_id: connection.execute(SELECT, (tenant, function_id)).fetchone()


def _postgres_select(connection: psycopg.Connection[Any]) -> Callable[[str, str], Any]:
    sql = SELECT.replace("?", "%s")

    def select(tenant: str, function_id: str) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(sql, (tenant, function_id))
            return cursor.fetchone()

    return select


@group("tenant_registry")
def tenant_registry(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts PostgreSQL, fills both registries, warms the cache and the buckets."""
    del config
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make engines-postgres`")
    keys = _keys()
    scale = {"functions": len(keys), "tenants": TENANTS}
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-reg-")))
        server = PostgresServer(bin_dir)
        cleanup.callback(server.remove)
        server.start()
        url = server.create_database()

        sqlite_path = temp / "registry.sqlite3"
        on_sqlite = Registry(sqlite_path)
        cleanup.callback(on_sqlite.close)
        on_postgres = Registry(open_database(parse_database_url(url, SETTING)))
        cleanup.callback(on_postgres.close)
        for registry in (on_sqlite, on_postgres):
            _fill(registry, keys)
        for tenant, function_id in keys:  # every record cached, as on a busy gateway
            on_postgres.load(tenant, function_id)
        records: dict[Key, FunctionRecord] = {k: on_sqlite.get(*k) for k in keys}

        guards = {"sqlite": _guard(on_sqlite), "postgres": _guard(on_postgres)}
        loop = asyncio.new_event_loop()
        cleanup.callback(loop.close)
        checks = {engine: _tenant_check(guard, keys, loop) for engine, guard in guards.items()}
        for check in checks.values():  # every tenant's buckets exist and hold a grant
            for _ in range(TENANTS):
                check()
        connection = cleanup.enter_context(psycopg.connect(url, autocommit=True))

        def lookup(registry: Registry) -> Callable[[str, str], object]:
            return registry.lookup

        yield [
            Benchmark(
                "python/dict_get",
                _cycling(keys, lambda t, f: records.get((t, f))),
                description="a dict of the 10,000 records: the floor of an in-memory lookup",
                params=scale,
            ),
            Benchmark(
                "python/token_dict",
                _token_dict(keys),
                description="SHA-256 of the token, dict lookup of its digest, tenant in scope",
                params=scale,
            ),
            Benchmark(
                "sqlite/select_pk",
                _cycling(keys, _sqlite_select(sqlite_path)),
                description="the registry's SELECT on a bare sqlite3 connection (WAL file)",
                params=scale,
            ),
            Benchmark(
                "tenant_registry/lookup/sqlite",
                _cycling(keys, lookup(on_sqlite)),
                anchors=("sqlite/select_pk", "python/dict_get"),
                description="Registry.lookup on SQLite: the inline read Invoke's resolve runs",
                params=scale,
            ),
            Benchmark(
                "postgres/select_pk",
                _cycling(keys, _postgres_select(connection)),
                description="the registry's SELECT on a bare psycopg connection (autocommit)",
                params=scale,
            ),
            Benchmark(
                "tenant_registry/read/postgres",
                _cycling(keys, on_postgres.get),
                anchors=("postgres/select_pk",),
                description="Registry.get on PostgreSQL: the database read of a cache miss",
                params=scale,
            ),
            Benchmark(
                "tenant_registry/lookup/postgres",
                _cycling(keys, lookup(on_postgres)),
                anchors=("postgres/select_pk", "python/dict_get"),
                description="Registry.lookup on PostgreSQL: the NOTIFY-invalidated cache",
                params=scale,
            ),
            Benchmark(
                "tenant_registry/tenant_check/sqlite",
                checks["sqlite"],
                anchors=("python/token_dict",),
                description="Guard authenticate + tenant_of + authorize, in-memory buckets",
                params={**scale, "tokens": TENANTS},
            ),
            Benchmark(
                "tenant_registry/tenant_check/postgres",
                checks["postgres"],
                anchors=("python/token_dict",),
                description="the same, rate-limit buckets shared on PostgreSQL (grants)",
                params={**scale, "tokens": TENANTS},
            ),
        ]
