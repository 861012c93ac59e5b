"""/v1/batches: submit a grid of pairs, follow its progress, download its results and report."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from service import batches
from service.batch_schemas import BatchOut, BatchRequest
from service.deps import QueueDep, ReaderDep, SessionDep, SettingsDep, WriterDep, checked_idempotency_key
from service.reports import document_etag
from service.routes.screenings import IdempotencyKey, submission
from service.schemas import PROBLEM
from store import logs

router = APIRouter(prefix="/v1/batches", tags=["batches"])

_READ: dict[int | str, dict[str, Any]] = {401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 429: PROBLEM}


@submission(router, BatchOut, served="every pair was served from stored results", summary="Submit a batch")
def submit_batch(
    body: BatchRequest,
    response: Response,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    caller: WriterDep,
    idempotency_key: IdempotencyKey = None,
) -> BatchOut:
    """Queue every (vision, language) pair. Each model's profile is computed once and shared by its pairs;
    each pair is a screening of its own (see the matrix). Answers 202 with `Location` and `Retry-After`.
    The same `Idempotency-Key` with the same body returns the same batch; with another body, 422."""
    submission = batches.submit_batch(
        session, queue, body, settings=settings, caller=caller, idempotency_key=checked_idempotency_key(idempotency_key)
    )
    out = batches.batch_out(session, submission.batch)
    logs.set_context(batch_id=out.id)
    response.headers["Location"] = out.href
    if out.state in ("queued", "running"):
        response.headers["Retry-After"] = str(settings.retry_after)
    else:
        response.status_code = 201
    if not submission.created:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.get("/{batch_id}", response_model=BatchOut, responses=_READ)
def get_batch(
    batch_id: str, session: SessionDep, response: Response, settings: SettingsDep, caller: ReaderDep
) -> BatchOut:
    """State and progress over pairs and profiles, and the matrix of results (rows: vision models)."""
    out = batches.batch_out(session, batches.get_batch(session, batch_id, caller.visible_tenant))
    if out.state in ("queued", "running"):
        response.headers["Retry-After"] = str(settings.retry_after)
    return out


@router.get(
    "/{batch_id}/results.json",
    responses={200: {"content": {"application/json": {}}}, **_READ},
    summary="Batch results as JSON",
)
def results_json(batch_id: str, session: SessionDep, caller: ReaderDep) -> JSONResponse:
    """The batch document: every pair with its full result JSON (or its problem); `phasescreen report` reads it."""
    document = batches.batch_results(session, batches.get_batch(session, batch_id, caller.visible_tenant))
    return JSONResponse(document)


@router.get(
    "/{batch_id}/results.csv",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/csv": {}}}, **_READ},
    summary="Batch results as CSV",
)
def results_csv(batch_id: str, session: SessionDep, caller: ReaderDep) -> PlainTextResponse:
    """One row per pair: the headline metrics, the measured outcome and each rule's verdict."""
    from phasecore.screening.batch import to_csv

    document = batches.batch_results(session, batches.get_batch(session, batch_id, caller.visible_tenant))
    return PlainTextResponse(
        to_csv(document),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"'},
    )


@router.get(
    "/{batch_id}/report",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}, "headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "the page has not changed since the ETag given in If-None-Match"},
        **_READ,
    },
    summary="Batch report (HTML)",
)
def report(
    batch_id: str,
    request: Request,
    session: SessionDep,
    caller: ReaderDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match", include_in_schema=False)] = None,
) -> Response:
    """A self-contained HTML page: phase landscape, S_cross heatmap, AGOP spectra per model, the rules'
    verdicts against measured outcomes, and the table of pairs (images inlined as data URIs). Drawn once per
    distinct state of the batch and kept (ETag: the state's hash; If-None-Match answers 304)."""
    document = batches.batch_results(session, batches.get_batch(session, batch_id, caller.visible_tenant))
    etag = document_etag(document)
    if if_none_match and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers={"ETag": etag})
    etag, page = request.app.state.report_cache.page(document, etag)
    return HTMLResponse(page, headers={"ETag": etag})
