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

    The unique key makes concurrent submissions of the same model agree on one row (the loser's insert fails
    and it reads the winner's), so the profile is computed once. A failed or cancelled profile is queued
    again.
    """
    profile = session.scalar(select(ModelProfile).where(ModelProfile.key == key))
    if profile is None:
        candidate = ModelProfile(
            key=key,
            model_ref=model_ref,
            modality=modality,
            dataset_ref=dataset_ref,
            settings=settings,
            state=QUEUED,
            progress=0.0,
            attempts=0,
        )
        try:
            with session.begin_nested():
                session.add(candidate)
            return candidate
        except IntegrityError:
            profile = session.scalar(select(ModelProfile).where(ModelProfile.key == key))
            if profile is None:
                raise
    if lifecycle.poisoned(profile):
        detail = lifecycle.poisoned_detail(profile)
        raise Problem(422, "poisoned-request", "Request known to fail", detail, profile_id=profile.id)
    lifecycle.reset_profile_if_finished_badly(session, profile)
    return profile
