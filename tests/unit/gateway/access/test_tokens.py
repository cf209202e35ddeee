"""Token grammar, hashed constant-time lookup, and the auth matrix (token x tenant x action)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
from tensorwasm_common.errors import Code, ServiceError
from tensorwasm_gateway.access.audit import AuditLog
from tensorwasm_gateway.access.guard import Guard
from tensorwasm_gateway.access.policies import policy_of
from tensorwasm_gateway.access.ratelimit import BucketConfig, ConcurrencyCaps, RateLimiter
from tensorwasm_gateway.access.tokens import (
    DEV_PRINCIPAL,
    Scope,
    TokenStore,
    parse_tokens,
    token_id_of,
)


def _scopes(text: str) -> dict[str, Scope]:
    return dict(parse_tokens(text))


def test_grammar_forms() -> None:
    scopes = _scopes("a1,b2:tenant=*,c3:tenant=acme,beta, d4:tenant = x ,e5:role=admin")
    assert scopes == {
        "a1": Scope(),
        "b2": Scope(),
        "c3": Scope(tenants=frozenset({"acme", "beta"})),
        "d4": Scope(tenants=frozenset({"x"})),
        "e5": Scope(admin=True),
    }


def test_the_publish_role_covers_every_tenant_but_no_fleet_operation() -> None:
    scope = _scopes("p1:role=publish")["p1"]
    assert scope == Scope(publish=True)
    assert scope.allows("anyone") and not scope.admin and scope.kind == "publish"
    assert _scopes("p2:role=publisher") == {}  # unknown role: dropped


def test_semicolons_and_newlines_end_entries() -> None:
    # "beta" after a ';' is a bare token, not a continuation of acme's list.
    scopes = _scopes("c3:tenant=acme;beta\n# comment\nf6:tenant=z")
    assert scopes == {
        "c3": Scope(tenants=frozenset({"acme"})),
        "beta": Scope(),
        "f6": Scope(tenants=frozenset({"z"})),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":tenant=1", "empty token"),
        ("tok:tenant=", "empty tenant list"),
        ("tok:tenant=Bad!", "invalid tenant"),
        ("tok:tenant=1,*", "'*' mixed"),
        ("tok:owner=1", "unknown key"),
        ("tok:role=root", "unknown key"),
    ],
)
def test_malformed_entries_are_dropped_and_others_kept(
    text: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        scopes = _scopes(f"{text};good-token-0123456789:tenant=ok")
    assert scopes == {"good-token-0123456789": Scope(tenants=frozenset({"ok"}))}
    assert any(message in r.getMessage() for r in caplog.records), caplog.text


def test_bare_tokens_warn_deprecated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parse_tokens("SOME-BARE-TOKEN-xyz")
    assert "deprecated" in caplog.text


def test_tokens_are_held_hashed_and_file_merges(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# fleet\nfile-token-abcdefghijk:tenant=acme\n")
    store = TokenStore.load("env-token-abcdefghijk:tenant=*", path)
    assert sorted(store.token_ids) == sorted(
        [token_id_of("env-token-abcdefghijk"), token_id_of("file-token-abcdefghijk")]
    )
    assert "env-token" not in repr(vars(store))  # only digests are kept
    principal = store.authenticate(["Bearer file-token-abcdefghijk"])
    assert principal.scope.tenants == frozenset({"acme"})
    assert principal.token_id.startswith("tok_") and len(principal.token_id) == 20


@pytest.mark.parametrize(
    "header",
    [
        "Bearer tok-0123456789abcdef",
        "bearer tok-0123456789abcdef",
        "BEARER\ttok-0123456789abcdef  ",
    ],
)
def test_bearer_scheme_forms(header: str) -> None:
    store = TokenStore(parse_tokens("tok-0123456789abcdef:tenant=*"))
    assert store.authenticate([header]).token_id == token_id_of("tok-0123456789abcdef")


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], "UNAUTHENTICATED"),
        (["Bearer wrong-0123456789abcdef"], "UNAUTHENTICATED"),
        (["Basic dG9rOng="], "UNAUTHENTICATED"),
        (["Bearer "], "UNAUTHENTICATED"),
        (["tok-0123456789abcdef"], "UNAUTHENTICATED"),
        (["Bearer tok-0123456789abcdef\x01"], "UNAUTHENTICATED"),
        (["Bearer " + "x" * 1100], "UNAUTHENTICATED"),
        (["Bearer tok-0123456789abcdef", "Bearer tok-0123456789abcdef"], "INVALID_METADATA"),
    ],
)
def test_bad_credentials(values: list[str], reason: str) -> None:
    store = TokenStore(parse_tokens("tok-0123456789abcdef:tenant=*"))
    with pytest.raises(ServiceError) as caught:
        store.authenticate(values)
    assert caught.value.reason == reason
    expected = Code.UNAUTHENTICATED if reason == "UNAUTHENTICATED" else Code.INVALID_ARGUMENT
    assert caught.value.code == expected


def test_no_tokens_is_dev_mode() -> None:
    store = TokenStore.load("")
    assert not store.enabled
    assert store.authenticate([]) is DEV_PRINCIPAL
    assert store.authenticate(["Bearer anything"]) is DEV_PRINCIPAL


# --- the matrix ----------------------------------------------------------------------------------

TOKENS = {
    "admin": "adm-0123456789abcdef:role=admin",
    "wildcard": "wild-0123456789abcdef:tenant=*",
    "acme": "acme-0123456789abcdef:tenant=acme",
    "acme_beta": "two-0123456789abcdef:tenant=acme,beta",
}
TENANTS = ("acme", "beta", "gamma", None)
ACTIONS = {
    "invoke": "/tensorwasm.gateway.v1.GatewayService/Invoke",
    "write": "/tensorwasm.gateway.v1.GatewayService/CreateFunction",
    "read": "/tensorwasm.gateway.v1.GatewayService/ListFunctions",
    "admin": "admin",
}
COVERS = {
    "admin": {"acme", "beta", "gamma", "default"},
    "wildcard": {"acme", "beta", "gamma", "default"},
    "acme": {"acme"},
    "acme_beta": {"acme", "beta"},
}


def _guard() -> Guard:
    store = TokenStore(parse_tokens(";".join(TOKENS.values())))
    limiter = RateLimiter(BucketConfig(0, 0), BucketConfig(0, 0))
    return Guard(store, limiter, ConcurrencyCaps({}), AuditLog(None))


@pytest.mark.parametrize(
    ("who", "tenant", "action"), list(itertools.product(TOKENS, TENANTS, ACTIONS))
)
def test_auth_matrix(who: str, tenant: str | None, action: str) -> None:
    guard = _guard()
    token = TOKENS[who].split(":")[0]
    metadata = [("authorization", f"Bearer {token}")]
    if tenant is not None:
        metadata.append(("x-tensorwasm-tenant", tenant))
    if action == "admin":
        policy = policy_of("/tensorwasm.gateway.v1.GatewayService/ListExecutors")
        policy = type(policy)(policy.method, policy.action, "admin", True, False)
    else:
        policy = policy_of(ACTIONS[action])
    principal = guard.authenticate(metadata)
    # No header: a single-tenant token acts on its tenant, others on "default".
    effective = tenant or ("acme" if who == "acme" else "default")
    assert guard.tenant_of(principal, metadata) == effective
    allowed = effective in COVERS[who] and (action != "admin" or who == "admin")
    if allowed:
        guard.authorize(policy, principal, effective)
        return
    with pytest.raises(ServiceError) as caught:
        guard.authorize(policy, principal, effective)
    assert caught.value.code == Code.PERMISSION_DENIED
    expected = "TENANT_SCOPE_DENIED" if effective not in COVERS[who] else "ADMIN_SCOPE_REQUIRED"
    assert caught.value.reason == expected


def test_duplicate_and_malformed_tenant_headers() -> None:
    guard = _guard()
    principal = guard.authenticate([("authorization", "Bearer wild-0123456789abcdef")])
    with pytest.raises(ServiceError) as duplicate:
        guard.tenant_of(principal, [("x-tensorwasm-tenant", "a"), ("x-tensorwasm-tenant", "b")])
    assert duplicate.value.reason == "INVALID_METADATA"
    with pytest.raises(ServiceError) as malformed:
        guard.tenant_of(principal, [("x-tensorwasm-tenant", "Not A Tenant")])
    assert malformed.value.reason == "INVALID_NAME"


@pytest.mark.parametrize(
    ("rpc", "call_class", "audited"),
    [
        ("Invoke", "invoke", True),
        ("InvokeStream", "invoke", True),
        ("CallInstance", "invoke", True),
        ("StartInvocation", "invoke", True),
        ("CreateFunction", "write", True),
        ("DeleteInstance", "write", True),
        ("GetFunction", "read", False),
        ("ListInvocations", "read", False),
    ],
)
def test_method_policy(rpc: str, call_class: str, audited: bool) -> None:
    policy = policy_of(f"/tensorwasm.gateway.v1.GatewayService/{rpc}")
    assert (policy.call_class, policy.audited) == (call_class, audited)
