"""/v1/screenings/{id}/outcomes: what training runs of a screened pair achieved (the study's reported labels)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from jobs import outcomes
from jobs.runtime import Runtime
from jobs.screenings import decode_cursor
from service.deps import (
    ReaderDep,
    ReporterDep,
    RuntimeDep,
    SessionDep,
    checked_idempotency_key,
    in_request_thread,
    json_response,
)
from service.outcome_schemas import OutcomeOut, OutcomePage, OutcomeRequest
from service.routes.screenings import IdempotencyKey, PageCursor
from service.schemas import PROBLEM
from service.views import outcome_out
from store.apikeys import Caller

router = APIRouter(prefix="/v1/screenings", tags=["outcomes"])


@router.post(
    "/{screening_id}/outcomes",
    status_code=201,
    response_model=OutcomeOut,
    responses={
        400: PROBLEM,
        401: PROBLEM,
        403: PROBLEM,
        404: PROBLEM,
        409: {**PROBLEM, "description": "the screening has not succeeded (queued, running, failed, cancelled)"},
        413: PROBLEM,
        422: PROBLEM,
        429: PROBLEM,
    },
    summary="Report a training run's outcome",
)
async def report_outcome(
    request: Request,
    screening_id: str,
    body: OutcomeRequest,
    runtime: RuntimeDep,
    caller: ReporterDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Record what a training run of this screening's pair achieved: the metric, its value, and the team's own
    success threshold and direction, on the team's evaluation dataset. Several runs per screening are allowed;
    the study labels a pair by its latest run (`GET /v1/study`, `reported`). Answers 201 with the outcome and
    its `Location`. The same `Idempotency-Key` with the same body returns the same outcome
    (`Idempotent-Replayed: true`); with another body, 422. 404: no such screening (or another tenant's); 409: the
    screening has not succeeded; 422: a value or threshold that is not a finite number, or a field outside the
    schema. Needs the `report` scope where keys are required."""
    key = checked_idempotency_key(idempotency_key)
    return await in_request_thread(request, _report, runtime, screening_id, body, caller, key)


def _report(
    runtime: Runtime, screening_id: str, body: OutcomeRequest, caller: Caller, idempotency_key: str | None
) -> Response:
    with runtime.session() as session:
        outcome, screening, created = outcomes.report_outcome(
            session, screening_id, body.model_dump(), caller=caller, idempotency_key=idempotency_key
        )
        out = outcome_out(outcome, screening)
    headers = {"Location": out.href}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(out, status_code=201, headers=headers)


@router.get(
    "/{screening_id}/outcomes",
    response_model=OutcomePage,
    responses={400: PROBLEM, 401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM, 429: PROBLEM},
)
def list_outcomes(
    screening_id: str,
    session: SessionDep,
    caller: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: PageCursor = None,
) -> OutcomePage:
    """The training-run outcomes reported for this screening, newest first; cursor pagination."""
    if cursor is not None:
        decode_cursor(cursor)  # 400 for anything but an id, the empty text included
    rows, screening, next_cursor = outcomes.list_outcomes(
        session, screening_id, tenant=caller.visible_tenant, limit=limit, cursor=cursor
    )
    return OutcomePage(items=[outcome_out(row, screening) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{screening_id}/outcomes/{outcome_id}",
    response_model=OutcomeOut,
    responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 429: PROBLEM},
)
def get_outcome(screening_id: str, outcome_id: str, session: SessionDep, caller: ReaderDep) -> OutcomeOut:
    """One reported outcome of this screening."""
    return outcome_out(*outcomes.get_outcome(session, screening_id, outcome_id, caller.visible_tenant))
