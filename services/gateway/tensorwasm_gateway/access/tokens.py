"""Bearer tokens: the token grammar, hashed storage, lookup by digest and tenant scopes.

Token configuration has one grammar (`TENSORWASM_GATEWAY_TOKENS` or the file
named by `TENSORWASM_GATEWAY_TOKENS_FILE`):

    tok                       bare token: every tenant (deprecated, warned once)
    tok:tenant=*              every tenant
    tok:tenant=acme,beta      only these tenants
    tok:role=admin            every tenant, and the fleet operations (ADMIN scope)
    tok:role=publish          every tenant, and publishing to the shared kernel catalogue

Entries are separated by commas, semicolons or newlines. After a `:tenant=` entry, a
comma-separated fragment without ':' that is `*` or a tenant id continues that entry's
list; separate entries with ';' or newlines when a bare token could
look like a tenant id. `#` starts a comment in the file. A malformed entry is dropped with
a warning and the others are kept: empty token, empty tenant list, invalid tenant, `*` mixed
with ids, unknown key.

Tokens are held only as SHA-256 digests; a presented token is looked up by its digest
(one lookup at any number of tokens: the time tells only whether that digest is known,
which the answer says anyway, and the digests of high-entropy secrets reveal nothing of
each other). A token's *id* (`tok_` + 16 hex of a domain-separated
SHA-256) names it in the audit log and metrics; it is not a secret, so tokens must be
high-entropy (a warning names short ones).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tensorwasm_common.tenants import TENANT_PATTERN

from tensorwasm_gateway.errors import (
    AdminScopeRequiredError,
    InvalidMetadataError,
    TenantScopeDeniedError,
    UnauthenticatedError,
)

_log = logging.getLogger(__name__)

MAX_AUTHORIZATION_BYTES = 1024
MIN_RECOMMENDED_TOKEN_CHARS = 16
_TOKEN_ID_DOMAIN = b"tensorwasm-gateway/token-id/v1\x00"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SCHEME = re.compile(r"(?i)bearer[ \t]+")
_WILDCARD = "*"


@dataclass(frozen=True)
class Scope:
    """What a token may touch: every tenant (`tenants` None) or a set; admin or not."""

    tenants: frozenset[str] | None = None
    admin: bool = False
    publish: bool = False  # may publish to the shared kernel catalogue (admin may too)

    @property
    def kind(self) -> str:
        """`admin`, `wildcard` or `tenant_set` (as written in the audit log)."""
        if self.admin:
            return "admin"
        if self.publish:
            return "publish"
        return "wildcard" if self.tenants is None else "tenant_set"

    def allows(self, tenant: str) -> bool:
        """True when the scope covers `tenant`."""
        return self.tenants is None or tenant in self.tenants


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's non-secret id and its scope (`dev` when auth is off)."""

    token_id: str
    scope: Scope
    kind: str = "bearer"


DEV_PRINCIPAL = Principal("dev", Scope(admin=True), kind="dev")


@dataclass(frozen=True)
class TokenEntry:
    """One configured token, held as its digest."""

    digest: bytes
    token_id: str
    scope: Scope


def token_id_of(token: str) -> str:
    """The stable, non-secret id of a token (for logs, audit records and metrics)."""
    return "tok_" + hashlib.sha256(_TOKEN_ID_DOMAIN + token.encode()).hexdigest()[:16]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _fragments(text: str) -> list[str]:
    """Comma-level fragments; ';' and newlines end an entry (they become an empty fragment)."""
    fragments: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in line.split(";"):
            fragments.extend(f.strip() for f in part.split(","))
            fragments.append("")
    return fragments


class _EntryError(ValueError):
    """A malformed token entry (dropped with a warning)."""


def _parse_entry(raw: str, tenants: list[str]) -> tuple[str, Scope]:
    """One entry (`token[:key=value]` plus continued tenants); _EntryError when malformed."""
    token, sep, clause = raw.partition(":")
    token = token.strip()
    if not token:
        raise _EntryError("empty token")
    if _CONTROL.search(token) or any(c in token for c in " \t"):
        raise _EntryError("whitespace or control character in token")
    if not sep:
        return token, Scope()
    key, eq, value = clause.partition("=")
    key = key.strip()
    if key == "role" and eq and value.strip() == "admin" and not tenants:
        return token, Scope(admin=True)
    if key == "role" and eq and value.strip() == "publish" and not tenants:
        return token, Scope(publish=True)
    if key != "tenant" or not eq:
        raise _EntryError(
            f"unknown key {key[:32]!r} (expected tenant=, role=admin or role=publish)"
        )
    names = [n for n in (v.strip() for v in [value, *tenants]) if n]
    if not names:
        raise _EntryError("empty tenant list")
    if _WILDCARD in names:
        if len(names) > 1:
            raise _EntryError("'*' mixed with tenant ids")
        return token, Scope()
    bad = [n for n in names if not TENANT_PATTERN.fullmatch(n)]
    if bad:
        raise _EntryError(f"invalid tenant {bad[0][:64]!r}")
    return token, Scope(tenants=frozenset(names))


def parse_tokens(text: str, errors: list[str] | None = None) -> list[tuple[str, Scope]]:
    """Parses token configuration (see the module docstring); bad entries are dropped
    (and why is appended to `errors`, when given)."""
    entries: list[tuple[str, Scope]] = []
    bare = 0
    current: str | None = None
    continued: list[str] = []

    def flush() -> None:
        nonlocal current, continued, bare
        if current is not None:
            try:
                entries.append(_parse_entry(current, continued))
                bare += ":" not in current
            except _EntryError as exc:
                _log.warning("token entry dropped: %s", exc)
                if errors is not None:
                    errors.append(str(exc))
        current, continued = None, []

    for fragment in _fragments(text):
        if not fragment:
            flush()
            continue
        is_continuation = (
            current is not None
            and ":tenant=" in current.replace(" ", "")
            and ":" not in fragment
            and (fragment == _WILDCARD or TENANT_PATTERN.fullmatch(fragment) is not None)
        )
        if is_continuation:
            continued.append(fragment)
            continue
        flush()
        current = fragment
    flush()
    if bare:
        _log.warning(
            "%d bare bearer token(s) (no :tenant=) act on every tenant; "
            "this form is deprecated, write tok:tenant=*",
            bare,
        )
    return entries


class TokenStore:
    """The configured tokens, hashed; authenticates `authorization` metadata values."""

    def __init__(self, entries: Iterable[tuple[str, Scope]]) -> None:
        stored: list[TokenEntry] = []
        seen: set[bytes] = set()
        short = 0
        for token, scope in entries:
            digest = _digest(token)
            if digest in seen:
                _log.warning("token entry dropped: duplicate token %s", token_id_of(token))
                continue
            seen.add(digest)
            short += len(token) < MIN_RECOMMENDED_TOKEN_CHARS
            stored.append(TokenEntry(digest, token_id_of(token), scope))
        if short:
            _log.warning(
                "%d bearer token(s) shorter than %d characters; use high-entropy tokens",
                short,
                MIN_RECOMMENDED_TOKEN_CHARS,
            )
        self._entries: tuple[TokenEntry, ...] = tuple(stored)
        # Looked up by the presented token's digest: one lookup whatever the number of
        # tokens. The lookup's time can tell only whether that digest is configured, which
        # the answer says anyway; the digests are SHA-256 of high-entropy secrets, so
        # comparing them reveals nothing about another token.
        # Each token's principal is built once (the guard and the audit log's actor cache
        # then see the same object on every call).
        self._by_digest = {entry.digest: Principal(entry.token_id, entry.scope) for entry in stored}

    @classmethod
    def load(cls, text: str = "", path: Path | None = None) -> TokenStore:
        """Tokens from the variable's text and/or a file (both are merged)."""
        sources = [text]
        if path is not None:
            sources.append(path.read_text())
        return cls(parse_tokens("\n".join(s for s in sources if s)))

    @property
    def enabled(self) -> bool:
        """False when no token is configured (dev mode: every call is the dev principal)."""
        return bool(self._entries)

    @property
    def token_ids(self) -> Sequence[str]:
        """The ids of the configured tokens."""
        return [e.token_id for e in self._entries]

    def authenticate(self, authorization: Sequence[str]) -> Principal:
        """The principal for the call's `authorization` values; UnauthenticatedError if none."""
        if not self._entries:
            return DEV_PRINCIPAL
        if len(authorization) != 1:
            if authorization:
                raise InvalidMetadataError("more than one authorization header")
            raise UnauthenticatedError("missing bearer token (authorization: Bearer <token>)")
        value = authorization[0]
        if len(value.encode()) > MAX_AUTHORIZATION_BYTES:
            raise UnauthenticatedError("authorization header is too long")
        scheme = _SCHEME.match(value)
        token = value[scheme.end() :].strip(" \t") if scheme else ""
        if not token or _CONTROL.search(token):
            raise UnauthenticatedError("malformed authorization header (expected Bearer <token>)")
        digest = _digest(token)
        found = self._by_digest.get(digest)
        if found is None:
            raise UnauthenticatedError("unknown bearer token")
        return found


def authorize_tenant(principal: Principal, tenant: str) -> None:
    """TenantScopeDeniedError unless the principal's scope covers the tenant."""
    if not principal.scope.allows(tenant):
        raise TenantScopeDeniedError(
            f"bearer token is not scoped to tenant {tenant!r}; extend the token's tenant= clause",
            metadata={"tenant": tenant, "token_id": principal.token_id},
        )


def authorize_admin(principal: Principal) -> None:
    """AdminScopeRequiredError unless the principal has the admin role."""
    if not principal.scope.admin:
        raise AdminScopeRequiredError(
            "this is a fleet operation; it needs a token with role=admin",
            metadata={"token_id": principal.token_id},
        )


def may_publish_shared_kernels(principal: Principal) -> bool:
    """True when the principal may publish to the shared kernel catalogue (role=publish
    or role=admin; dev mode's principal is admin)."""
    return principal.scope.publish or principal.scope.admin
