"""API keys: random secrets shown once, stored as their sha256 (a leaked table reveals no usable key).

A key belongs to a tenant (keys of one tenant share their screenings and batches), carries scopes
(``screen``: submit and cancel; ``read``: read and list; ``report``: report what a training run of a screened
pair achieved; ``admin``: ``/metrics``), and may expire or be
revoked; either makes it unusable at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from store.models import ApiKey, new_id, utcnow

KEY_PREFIX = "psk_"
SCOPES = ("screen", "read", "report", "admin")
DEFAULT_SCOPES = ("screen", "read", "report")
# last_used_at is a hint for operators, not an audit log: write it at most this often per key
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class KeyIdentity:
    """What a request needs to know about its key, detached from any session."""

    id: str
    name: str
    tenant: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None


@dataclass(frozen=True)
class Caller:
    """Who is asking: the key (``None``: anonymous) and whether its view is limited to its tenant."""

    key: KeyIdentity | None
    scoped: bool  # PHASESCREEN_REQUIRE_API_KEY: every object access is limited to the key's tenant

    @property
    def owner(self) -> str:
        """Recorded on what the caller creates: the key id, "" when anonymous (Idempotency-Keys are per key)."""
        return self.key.id if self.key else ""

    @property
    def tenant(self) -> str:
        return self.key.tenant if self.key else ""

    @property
    def visible_tenant(self) -> str | None:
        """The tenant whose objects the caller may see; ``None``: all (anonymous single-user mode)."""
        return self.tenant if self.scoped else None


#: a caller without a key in a deployment that requires none (the CLI's local mode, scripts)
ANONYMOUS = Caller(None, scoped=False)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Known scopes in canonical order; raises ``ValueError`` on an unknown one or none at all."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    wanted = {part.strip() for part in parts if part.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
    if not wanted:
        raise ValueError(f"at least one scope is needed ({', '.join(SCOPES)})")
    return tuple(scope for scope in SCOPES if scope in wanted)


def check_tenant(tenant: str) -> str:
    tenant = tenant.strip()
    if not tenant or len(tenant) > 64 or not tenant.isascii() or not tenant.isprintable():
        raise ValueError("a tenant is 1 to 64 printable ASCII characters")
    return tenant


def create_api_key(
    session: Session,
    name: str,
    *,
    tenant: str | None = None,
    scopes: str | tuple[str, ...] = DEFAULT_SCOPES,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its secret (returned once, never stored). Flushes, does not commit.

    Without ``tenant`` the key is a tenant of its own (its id)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id()
    key = ApiKey(
        id=key_id,
        name=name,
        tenant=check_tenant(tenant) if tenant is not None else key_id,
        scopes=",".join(parse_scopes(scopes)),
        expires_at=expires_at,
        prefix=secret[:12],
        key_hash=hash_key(secret),
        rate_limit_per_minute=rate_limit_per_minute,
    )
    session.add(key)
    session.flush()
    return key, secret


def identity_of(key: ApiKey) -> KeyIdentity:
    return KeyIdentity(
        id=key.id,
        name=key.name,
        tenant=key.tenant,
        scopes=frozenset(s.strip() for s in key.scopes.split(",") if s.strip()),
        rate_limit_per_minute=key.rate_limit_per_minute,
    )


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The live key with this secret (not revoked, not expired), or ``None``."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    now = utcnow()
    key = session.scalar(
        select(ApiKey).where(
            ApiKey.key_hash == hash_key(secret),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    )
    if key is not None and (key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION):
        key.last_used_at = now
        session.commit()
    return key


def list_api_keys(session: Session, *, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def find_api_key(session: Session, id_or_prefix: str) -> ApiKey | None:
    """A key by its id or by the prefix ``apikey list`` shows (``psk_`` and 8 characters)."""
    key = session.get(ApiKey, id_or_prefix)
    if key is None and id_or_prefix.startswith(KEY_PREFIX):
        matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == id_or_prefix).limit(2)))
        key = matches[0] if len(matches) == 1 else None
    return key


def revoke_api_key(session: Session, key_id: str) -> bool:
    key = find_api_key(session, key_id)
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.flush()
    return True
