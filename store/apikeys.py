"""API keys: random secrets shown once, stored as their sha256 (a leaked table reveals no usable key)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ApiKey, utcnow

KEY_PREFIX = "psk_"
# last_used_at is a hint for operators, not an audit log: write it at most this often per key
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(session: Session, name: str, *, rate_limit_per_minute: int | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret (returned once, never stored). Flushes, does not commit."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=secret[:12],
        key_hash=hash_key(secret),
        rate_limit_per_minute=rate_limit_per_minute,
    )
    session.add(key)
    session.flush()
    return key, secret


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The live key with this secret, or ``None``."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)))
    if key is not None:
        now = utcnow()
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            key.last_used_at = now
            session.commit()
    return key


def revoke_api_key(session: Session, key_id: str) -> bool:
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.flush()
    return True
