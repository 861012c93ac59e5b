"""Model profiles: one row per (model, dataset sample, engine settings), computed once and shared."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs import lifecycle
from store.models import QUEUED, ModelProfile
from store.problems import Problem


def get_or_create_profile(
    session: Session, key: str, model_ref: str, modality: str, dataset_ref: str, settings: dict[str, Any]
) -> ModelProfile:
    """The profile row under ``key``, inserted if missing.

    The unique key makes concurrent submissions of the same model agree on one row (the loser's insert does
    nothing and it reads the winner's), so the profile is computed once. A failed or cancelled profile is
    queued again.
    """
    profile = session.scalar(select(ModelProfile).where(ModelProfile.key == key))
    if profile is None:
        values = {
            "key": key,
            "model_ref": model_ref,
            "modality": modality,
            "dataset_ref": dataset_ref,
            "settings": settings,
            "state": QUEUED,
            "progress": 0.0,
            "attempts": 0,
        }
        inserted = _insert_unless_present(session, values)
        if inserted is not None:
            return inserted
        profile = session.scalar(select(ModelProfile).where(ModelProfile.key == key))
        if profile is None:  # pragma: no cover - the conflicting row vanished between two statements
            raise RuntimeError(f"profile {key} conflicted on insert and then could not be read")
    if lifecycle.poisoned(profile):
        detail = lifecycle.poisoned_detail(profile)
        raise Problem(422, "poisoned-request", "Request known to fail", detail, profile_id=profile.id)
    lifecycle.reset_profile_if_finished_badly(session, profile)
    return profile


def _insert_unless_present(session: Session, values: dict[str, Any]) -> ModelProfile | None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING``: the new row, or ``None`` when a concurrent
    submission inserted the key first. One statement, where a savepoint around a plain INSERT took three
    (and a failed INSERT would abort a PostgreSQL transaction without one). Other databases take that path."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # same API, other module
    else:
        candidate = ModelProfile(**values)
        try:
            with session.begin_nested():
                session.add(candidate)
        except IntegrityError:
            return None
        return candidate
    statement = insert(ModelProfile).values(**values).on_conflict_do_nothing(index_elements=["key"])
    return session.scalar(statement.returning(ModelProfile))
