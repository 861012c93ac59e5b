"""Idempotency-Keys of what a caller creates (a screening, a batch, a reported outcome): the same key with the
same request body answers what the first request created; with another body, 422.

Each such row records its ``owner`` (the key id, "" when anonymous), the ``idempotency_key`` it was sent with
(unique per owner) and the ``fingerprint`` of its request body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from problems import Problem
from store.batch_models import Batch
from store.models import Outcome, Screening

Row = TypeVar("Row", Screening, Batch, Outcome)


def find_by_idempotency_key(session: Session, model: type[Row], owner: str, key: str | None) -> Row | None:
    """The row ``owner`` created with Idempotency-Key ``key``; ``None`` when there is none (or no key)."""
    if key is None:
        return None
    return session.scalar(select(model).where(model.owner == owner, model.idempotency_key == key))


def replay(
    existing: Row,
    fingerprint: str,
    belongs_to: str,
    *,
    body: str = "request body",
    new: str = "request",
    **extensions: Any,
) -> Row:
    """``existing``, made by an earlier request with the same Idempotency-Key, when that request had the same
    body (``fingerprint``); else 422 ``idempotency-key-reused``, saying the key ``belongs_to`` that row."""
    if existing.fingerprint == fingerprint:
        return existing
    raise Problem(
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused",
        f"this Idempotency-Key was already used with a different {body}; use a new key for a new {new} (the key "
        f"belongs to {belongs_to})",
        **extensions,
    )


def insert_once(session: Session, row: Row, replayed: Callable[[Row], Row]) -> tuple[Row, bool]:
    """Add and flush ``row``: (``row``, True); or, when a concurrent request with the same Idempotency-Key won
    the insert, (that request's row, through ``replayed``, False). Without a key nothing unique can collide, so no
    savepoint (two round trips) is spent."""
    if row.idempotency_key is None:
        session.add(row)
        session.flush()
        return row, True
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = find_by_idempotency_key(session, type(row), row.owner, row.idempotency_key)
        if existing is None:
            raise
        return replayed(existing), False
    return row, True
