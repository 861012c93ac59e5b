"""/v1/screenings: submit, read, list, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import AfterValidator, BaseModel

from jobs.runtime import Runtime
from jobs.screenings import decode_cursor
from service import screenings
from service.contract import IDEMPOTENCY_KEY_PATTERN, NO_NUL_PATTERN
from service.deps import (
    ReaderDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    WriterDep,
    checked_idempotency_key,
    in_request_thread,
    json_response,
)
from service.schemas import PROBLEM, SUBMIT_PROBLEMS, ScreeningOut, ScreeningPage, ScreeningRequest, State
from service.settings import ApiSettings
from service.views import load_profiles, screening_href, screening_out
from store import logs
from store.apikeys import Caller
from store.models import ACTIVE_STATES, ID_PATTERN

router = APIRouter(prefix="/v1/screenings", tags=["screenings"])
_Route = TypeVar("_Route", bound=Callable[..., Any])

#: the ``cursor`` query parameter of a paged list (the ``next_cursor`` of the previous page)
PageCursor = Annotated[
    str | None,
    Query(
        description="next_cursor of the previous page (400 invalid-cursor when it is not of that form)",
        json_schema_extra={"pattern": ID_PATTERN},
    ),
]


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


FilterText = Annotated[str | None, AfterValidator(_no_nul)]
_TEXT = {"pattern": NO_NUL_PATTERN}  # the schema says what _no_nul enforces
#: the Idempotency-Key header of the POSTs that create something (checked by checked_idempotency_key: 400)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="the same key with the same body returns the same object (1 to 255 printable ASCII characters)",
        json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN, "maxLength": 255},
    ),
]


def submission(router: APIRouter, model: type[BaseModel], *, served: str, summary: str) -> Callable[[_Route], _Route]:
    """The ``POST ""`` route of ``router`` that submits something (a screening, a batch): 202 with ``model``
    when it is queued, 201 when it was ``served`` from stored results at once, and SUBMIT_PROBLEMS."""
    responses: dict[int | str, dict[str, Any]] = {201: {"model": model, "description": served}, **SUBMIT_PROBLEMS}
    return router.post("", status_code=202, response_model=model, responses=responses, summary=summary)


@submission(router, ScreeningOut, served="served from an identical finished screening", summary="Submit a screening")
async def submit_screening(
    request: Request,
    body: ScreeningRequest,
    runtime: RuntimeDep,
    settings: SettingsDep,
    caller: WriterDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a screening of a (vision, language) pair. Answers 202 with the screening, `Location` and
    `Retry-After`; poll the Location. The same `Idempotency-Key` with the same body returns the same
    screening; with another body, 422."""
    key = checked_idempotency_key(idempotency_key)
    # one trip to the thread pool for the whole request (session, queue, body), not one per step
    return await in_request_thread(request, _submit, runtime, settings, body, caller, key)


def _submit(
    runtime: Runtime, settings: ApiSettings, body: ScreeningRequest, caller: Caller, idempotency_key: str | None
) -> Response:
    with runtime.session() as session:
        submission = screenings.submit_screening(
            session, runtime.queue, body, settings=settings, caller=caller, idempotency_key=idempotency_key
        )
        screening = submission.screening
        logs.set_context(screening_id=screening.id)
        out = screening_out(screening, submission.profiles)
    headers = {"Location": screening_href(screening.id)}
    if screening.state in ACTIVE_STATES:
        headers["Retry-After"] = str(settings.retry_after)
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(out, status_code=202 if screening.state in ACTIVE_STATES else 201, headers=headers)


@router.get(
    "",
    response_model=ScreeningPage,
    responses={400: PROBLEM, 401: PROBLEM, 403: PROBLEM, 422: PROBLEM, 429: PROBLEM},
)
def list_screenings(
    session: SessionDep,
    caller: ReaderDep,
    state: State | None = None,
    model: Annotated[
        FilterText, Query(max_length=512, description="vision or language model reference", json_schema_extra=_TEXT)
    ] = None,
    dataset: Annotated[FilterText, Query(max_length=256, json_schema_extra=_TEXT)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: PageCursor = None,
) -> ScreeningPage:
    """Screenings, newest first, filtered by state, model and dataset; cursor pagination. With keys required,
    only the caller's tenant's."""
    if cursor is not None:
        decode_cursor(cursor)  # 400 for anything but an id, the empty text included
    rows, next_cursor = screenings.list_screenings(
        session,
        state=state,
        model=model,
        dataset=dataset,
        limit=limit,
        cursor=cursor,
        tenant=caller.visible_tenant,
    )
    profiles = load_profiles(session, rows)
    return ScreeningPage(
        items=[screening_out(row, profiles, include_result=False) for row in rows], next_cursor=next_cursor
    )


@router.get(
    "/{screening_id}",
    response_model=ScreeningOut,
    responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 429: PROBLEM},
)
async def get_screening(
    request: Request, screening_id: str, runtime: RuntimeDep, settings: SettingsDep, caller: ReaderDep
) -> Response:
    """State, stage and progress, the request, and the result (succeeded) or a problem document (failed)."""
    return await in_request_thread(request, _read, runtime, settings, screening_id, caller.visible_tenant)


def _read(runtime: Runtime, settings: ApiSettings, screening_id: str, tenant: str | None) -> Response:
    with runtime.session() as session:
        out = screenings.read_screening(session, screening_id, tenant)
    active = out.state in ACTIVE_STATES
    return json_response(out, headers={"Retry-After": str(settings.retry_after)} if active else None)


@router.post(
    "/{screening_id}/cancel",
    response_model=ScreeningOut,
    responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 409: PROBLEM, 429: PROBLEM},
)
def cancel_screening(screening_id: str, session: SessionDep, caller: WriterDep) -> ScreeningOut:
    """Cancel a queued or running screening; a running job stops at its next progress report."""
    screening = screenings.cancel_screening(session, screening_id, caller.visible_tenant)
    return screening_out(screening, load_profiles(session, [screening]))
