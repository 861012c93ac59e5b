"""Outcomes reported by training jobs: record, read and list what a training run of a screened pair achieved.

The application functions behind ``/v1/screenings/{id}/outcomes`` and ``phasescreen outcome report | list`` in
local mode (``service.views.outcome_out`` turns their rows into the API's bodies). A report attaches to a succeeded
screening the caller may see; the study reads the reports as its second label source (``store.records``,
``phasecore.study.reported``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.screenings import decode_cursor, encode_cursor, get_screening
from problems import Problem, not_found
from store import idempotency
from store.apikeys import ANONYMOUS, Caller
from store.models import SUCCEEDED, Outcome, Screening, is_id


def _fingerprint(screening_id: str, report: Mapping[str, Any]) -> str:
    body = {"screening_id": screening_id, **report}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replay(existing: Outcome, fingerprint: str) -> Outcome:
    return idempotency.replay(
        existing,
        fingerprint,
        f"outcome {existing.id} of screening {existing.screening_id}",
        body="outcome or screening",
        new="report",
        outcome_id=existing.id,
    )


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
    report: Mapping[str, Any],
    *,
    caller: Caller = ANONYMOUS,
    idempotency_key: str | None = None,
) -> tuple[Outcome, Screening, bool]:
    """Record one training run's outcome (``report``: the fields of a checked ``OutcomeRequest``) for a
    succeeded screening ``caller`` may see; commits. Returns (the outcome, its screening, whether it is new:
    False for an ``Idempotency-Key`` replay of the same report).

    The caller's owner and tenant are recorded on the report. Raises :class:`Problem`: 404 for a screening the
    caller cannot see, 409 for one that has not succeeded, 422 for an Idempotency-Key reused with another
    report."""
    fingerprint = _fingerprint(screening_id, report)
    existing = idempotency.find_by_idempotency_key(session, Outcome, caller.owner, idempotency_key)
    if existing is not None:
        replayed = _replay(existing, fingerprint)
        return replayed, _reportable(session, replayed.screening_id, caller.visible_tenant), False
    screening = _reportable(session, screening_id, caller.visible_tenant)
    outcome = Outcome(
        screening_id=screening.id,
        owner=caller.owner,
        tenant=caller.tenant,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        **report,
    )
    outcome, created = idempotency.insert_once(session, outcome, lambda row: _replay(row, fingerprint))
    if created:
        session.commit()
    return outcome, screening, created


def get_outcome(
    session: Session, screening_id: str, outcome_id: str, tenant: str | None = None
) -> tuple[Outcome, Screening]:
    """One reported outcome of a screening the caller may see, with the screening; 404 otherwise."""
    screening = get_screening(session, screening_id, tenant)
    outcome = session.get(Outcome, outcome_id) if is_id(outcome_id) else None
    if outcome is None or outcome.screening_id != screening.id:
        raise not_found("outcome of this screening", outcome_id)
    return outcome, screening


def list_outcomes(
    session: Session, screening_id: str, *, tenant: str | None = None, limit: int = 20, cursor: str | None = None
) -> tuple[list[Outcome], Screening, str | None]:
    """A screening's reported outcomes, newest first, the screening, and the cursor of the next page (None on
    the last)."""
    screening = get_screening(session, screening_id, tenant)
    query = select(Outcome).where(Outcome.screening_id == screening.id).order_by(Outcome.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(Outcome.id < decode_cursor(cursor))
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], screening, next_cursor
