"""Rows to response bodies. A screening's stage and progress combine its profiles' and its pair step's."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from phasecore.screening.result import ScreeningResult
from phasecore.study.reported import is_success
from service.outcome_schemas import OutcomeOut
from service.schemas import ProblemOut, ProfileOut, ProfileSummary, ScreeningOut
from store.models import ACTIVE_STATES, RUNNING, SUCCEEDED, Outcome, Screening, StoredProfile

# share of a screening's progress spent in each profile and in the pair step
_PROFILE_SHARE, _PAIR_SHARE = 0.45, 0.10


def screening_href(screening_id: str) -> str:
    return f"/v1/screenings/{screening_id}"


def profile_href(profile_id: str) -> str:
    return f"/v1/profiles/{profile_id}"


def outcome_href(screening_id: str, outcome_id: str) -> str:
    return f"/v1/screenings/{screening_id}/outcomes/{outcome_id}"


def load_profiles(session: Session, screenings: Iterable[Screening]) -> dict[str, StoredProfile]:
    ids = {pid for s in screenings for pid in (s.vision_profile_id, s.language_profile_id) if pid}
    if not ids:
        return {}
    return {p.id: p for p in session.scalars(select(StoredProfile).where(StoredProfile.id.in_(ids)))}


def _stage_and_progress(screening: Screening, profiles: dict[str, StoredProfile]) -> tuple[str | None, float]:
    if screening.state not in ACTIVE_STATES:
        return screening.stage, 1.0 if screening.state == SUCCEEDED else screening.progress
    if screening.lease_token is not None:  # the pair step runs
        return f"pair:{screening.stage}" if screening.stage and screening.stage != "pair" else "pair", (
            2 * _PROFILE_SHARE + _PAIR_SHARE * screening.progress
        )
    progress, stage = 0.0, None
    for modality, pid in (
        ("vision", screening.vision_profile_id),
        ("language", screening.language_profile_id),
    ):
        profile = profiles.get(pid or "")
        if profile is None:
            continue
        progress += _PROFILE_SHARE * (1.0 if profile.state == SUCCEEDED else profile.progress)
        if profile.state == RUNNING and stage is None:
            stage = f"{modality}:{profile.stage or 'starting'}"
    if stage is None:
        stage = "waiting for a worker"
    return stage, progress


def screening_out(
    screening: Screening, profiles: dict[str, StoredProfile], *, include_result: bool = True
) -> ScreeningOut:
    stage, progress = _stage_and_progress(screening, profiles)
    summaries = {}
    for modality, pid in (
        ("vision", screening.vision_profile_id),
        ("language", screening.language_profile_id),
    ):
        profile = profiles.get(pid or "")
        if profile is not None:
            summaries[modality] = ProfileSummary(
                id=profile.id,
                state=profile.state,
                stage=profile.stage,
                progress=1.0 if profile.state == SUCCEEDED else profile.progress,
                href=profile_href(profile.id),
            )
    return ScreeningOut(
        id=screening.id,
        state=screening.state,
        stage=stage,
        progress=min(max(progress, 0.0), 1.0),
        request=screening.request,
        fingerprint=screening.fingerprint,
        attempts=screening.attempts,
        created_at=screening.created_at,
        updated_at=screening.updated_at,
        started_at=screening.started_at,
        finished_at=screening.finished_at,
        profiles=summaries,
        reused_from=screening.reused_from,
        result=screening.result if include_result else None,
        problem=ProblemOut.of(screening.problem),
        href=screening_href(screening.id),
    )


def profile_out(profile: StoredProfile) -> ProfileOut:
    return ProfileOut(
        id=profile.id,
        key=profile.key,
        model=profile.model_ref,
        modality=profile.modality,
        dataset=profile.dataset_ref,
        settings=profile.settings,
        state=profile.state,
        stage=profile.stage,
        progress=1.0 if profile.state == SUCCEEDED else profile.progress,
        attempts=profile.attempts,
        identity=profile.identity,
        meta=profile.meta,
        arrays=profile.arrays,
        size_bytes=profile.size_bytes,
        problem=ProblemOut.of(profile.problem),
        created_at=profile.created_at,
        started_at=profile.started_at,
        finished_at=profile.finished_at,
        href=profile_href(profile.id),
    )


def outcome_out(outcome: Outcome, screening: Screening) -> OutcomeOut:
    return OutcomeOut(
        id=outcome.id,
        screening_id=outcome.screening_id,
        metric=outcome.metric,
        value=outcome.value,
        success_threshold=outcome.success_threshold,
        success_direction=outcome.success_direction,  # checked on the way in
        success=is_success(outcome.value, outcome.success_threshold, outcome.success_direction),
        dataset=outcome.dataset,
        examples=outcome.examples,
        steps=outcome.steps,
        method=outcome.method,
        run_url=outcome.run_url,
        notes=outcome.notes,
        proxy_outcome=_proxy_outcome(screening.result),
        created_at=outcome.created_at,
        href=outcome_href(outcome.screening_id, outcome.id),
    )


def _proxy_outcome(result: ScreeningResult | None) -> str | None:
    outcome = None if result is None or result.ground_truth is None else result.ground_truth.outcome
    return outcome if outcome in ("aligned", "failed", "inconclusive") else None
