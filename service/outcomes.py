"""Outcomes reported by training jobs: report, read and list what a training run of a screened pair achieved.

Plain functions over a session, shared by the API routes and ``phasescreen outcome report`` in local mode. A
report attaches to a succeeded screening the caller may see; the study reads the reports as its second label
source (``store.records``, ``phasecore.study.reported``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from phasecore.study.reported import is_success
from service.contract import is_id
from service.outcome_schemas import OutcomeOut, OutcomeRequest
from service.screenings import decode_cursor, encode_cursor, get_screening
from store.models import SUCCEEDED, Outcome, Screening
from store.problems import Problem, not_found


def outcome_href(screening_id: str, outcome_id: str) -> str:
    return f"/v1/screenings/{screening_id}/outcomes/{outcome_id}"


def _fingerprint(screening_id: str, request: OutcomeRequest) -> str:
    body = {"screening_id": screening_id, **request.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay(existing: Outcome, fingerprint: str) -> Outcome:
    if existing.fingerprint != fingerprint:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was already used with a different outcome or screening; use a new key for a new "
            f"report (the key belongs to outcome {existing.id} of screening {existing.screening_id})",
            outcome_id=existing.id,
        )
    return existing


def _reportable(session: Session, screening_id: str, tenant: str | None) -> Screening:
    """The screening, if ``tenant`` may see it (404 as for one that does not exist) and it succeeded (409)."""
    screening = get_screening(session, screening_id, tenant)
    if screening.state != SUCCEEDED:
        advice = "wait until it has succeeded" if screening.state in ("queued", "running") else "screen the pair again"
        raise Problem(
            409,
            "screening-not-succeeded",
            "Screening has no result",
            f"screening {screening_id} is {screening.state}; a training-run outcome can be reported only for a "
            f"succeeded screening, whose result the study compares it with: {advice}",
            screening_id=screening_id,
            state=screening.state,
        )
    return screening


def report_outcome(
    session: Session,
    screening_id: str,
    request: OutcomeRequest,
    *,
    owner: str = "",
    tenant: str = "",
    visible_tenant: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[OutcomeOut, bool]:
    """Record one training run's outcome for a succeeded screening; commits. Returns (the outcome, whether it
    is new: False for an ``Idempotency-Key`` replay of the same report).

    ``visible_tenant``: the tenant whose screenings the caller may see (None: any, anonymous mode); ``tenant``
    and ``owner`` are recorded on the report. Raises :class:`Problem`: 404 for a screening the caller cannot
    see, 409 for one that has not succeeded, 422 for an Idempotency-Key reused with another report."""
    fingerprint = _fingerprint(screening_id, request)
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            replayed = _replay(existing, fingerprint)
            return outcome_out(replayed, _reportable(session, replayed.screening_id, visible_tenant)), False
    screening = _reportable(session, screening_id, visible_tenant)
    outcome = Outcome(
        screening_id=screening.id,
        owner=owner,
        tenant=tenant,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        **request.model_dump(),
    )
    try:
        with session.begin_nested():
            session.add(outcome)
    except IntegrityError:
        # a concurrent request with the same Idempotency-Key won the insert
        existing = _by_idempotency_key(session, owner, idempotency_key or "") if idempotency_key else None
        if existing is None:
            raise
        return outcome_out(_replay(existing, fingerprint), screening), False
    session.commit()
    return outcome_out(outcome, screening), True


def _by_idempotency_key(session: Session, owner: str, key: str) -> Outcome | None:
    return session.scalar(select(Outcome).where(Outcome.owner == owner, Outcome.idempotency_key == key))


def get_outcome(session: Session, screening_id: str, outcome_id: str, tenant: str | None = None) -> OutcomeOut:
    """One reported outcome of a screening the caller may see; 404 otherwise."""
    screening = get_screening(session, screening_id, tenant)
    outcome = session.get(Outcome, outcome_id) if is_id(outcome_id) else None
    if outcome is None or outcome.screening_id != screening.id:
        raise not_found("outcome of this screening", outcome_id)
    return outcome_out(outcome, screening)


def list_outcomes(
    session: Session, screening_id: str, *, tenant: str | None = None, limit: int = 20, cursor: str | None = None
) -> tuple[list[OutcomeOut], str | None]:
    """A screening's reported outcomes, newest first, with the cursor of the next page (None on the last)."""
    screening = get_screening(session, screening_id, tenant)
    query = select(Outcome).where(Outcome.screening_id == screening.id).order_by(Outcome.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(Outcome.id < decode_cursor(cursor))
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return [outcome_out(row, screening) for row in rows[:limit]], next_cursor


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


def _proxy_outcome(result: dict[str, Any] | None) -> Any:
    ground_truth = (result or {}).get("ground_truth") or {}
    outcome = ground_truth.get("outcome")
    return outcome if outcome in ("aligned", "failed", "inconclusive") else None
