"""Batches: every pair of a grid as one screening each, so pairs share their model profiles.

A V × L batch inserts V · L screenings through :func:`service.screenings.create_screening`; screenings of
the same model on the same data and settings get the same profile row, so the queue receives V + L profile
jobs, and each pair job is enqueued by the last of its two profiles to finish. Plain functions over a
session, called by the routes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.queue import JobQueue, JobRef
from phasecore import ENGINE_VERSION
from phasecore.errors import PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.screening import batch as engine_batch
from phasecore.screening.result import ScreeningResult
from problems import Problem, from_domain_error, not_found
from service import screenings
from service.batch_schemas import BatchCell, BatchOut, BatchRequest
from service.contract import check_dataset_syntax, check_reference_syntax
from service.schemas import ScreeningRequest
from service.settings import ApiSettings
from service.views import load_profiles, screening_href, screening_out
from store import idempotency
from store.apikeys import ANONYMOUS, Caller
from store.batch_models import Batch, BatchPair
from store.models import Screening, is_id

log = logging.getLogger(__name__)


def batch_href(batch_id: str) -> str:
    return f"/v1/batches/{batch_id}"


@dataclass(frozen=True)
class BatchSubmission:
    batch: Batch
    created: bool  # False: an Idempotency-Key replay of an earlier submission


def create_batch(
    session: Session,
    request: BatchRequest,
    *,
    settings: ApiSettings,
    caller: Caller = ANONYMOUS,
    idempotency_key: str | None = None,
) -> Batch:
    """Insert a batch, one screening per pair (and the profiles they need). Flushes, does not commit.

    Raises :class:`Problem`: 422 on an invalid pair (the whole batch is refused), 503 when the pairs would
    take the deployment above its limit of active screenings.
    """
    return _create(session, request, settings, caller, idempotency_key).batch


def _create(
    session: Session, request: BatchRequest, settings: ApiSettings, caller: Caller, idempotency_key: str | None
) -> BatchSubmission:
    vision = _canonical(request.vision, "vision")
    language = _canonical(request.language, "language")
    try:
        check_dataset_syntax(request.dataset)
    except PhasescreenError as exc:
        raise from_domain_error(exc) from exc
    # a whole grid or nothing: the tenant's (keys required) or the deployment's limit of active screenings
    screenings.check_capacity(session, settings, caller.visible_tenant, adding=len(vision) * len(language))
    dataset = request.dataset.strip()
    fingerprint = _fingerprint(request)
    batch = Batch(
        owner=caller.owner,
        tenant=caller.tenant,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        name=request.name,
        dataset_ref=dataset,
        request={
            "vision": vision,
            "language": language,
            "dataset": dataset,
            "options": request.options.model_dump(mode="json"),
        },
    )
    batch, created = idempotency.insert_once(session, batch, lambda existing: _replay(existing, fingerprint))
    if not created:
        return BatchSubmission(batch, created=False)
    for i, vision_ref in enumerate(vision):
        for j, language_ref in enumerate(language):
            pair = ScreeningRequest(
                vision=vision_ref,
                language=language_ref,
                dataset=request.dataset,
                options=request.options,
                reuse=request.reuse,
            )
            screening = screenings.create_screening(session, pair, settings=settings, caller=caller)
            session.add(BatchPair(batch_id=batch.id, vision_index=i, language_index=j, screening_id=screening.id))
    session.flush()
    return BatchSubmission(batch, created=True)


def _fingerprint(request: BatchRequest) -> str:
    """sha256 of the canonical request body (references in canonical form) and the engine version."""
    body = {
        "vision": _canonical(request.vision, "vision"),
        "language": _canonical(request.language, "language"),
        "dataset": request.dataset.strip(),
        "options": request.options.keyed_fields(),
        "name": request.name,
        "reuse": request.reuse,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{canonical}\n{ENGINE_VERSION}".encode()).hexdigest()


def _replay(existing: Batch, fingerprint: str) -> Batch:
    return idempotency.replay(existing, fingerprint, f"batch {existing.id}", batch_id=existing.id)


def _canonical(references: list[str], role: str) -> list[str]:
    """Canonical references (as screenings store them), each at most once."""
    try:
        for reference in references:
            check_reference_syntax(reference, role)
        canonical = [ModelRef.parse(r).canonical() for r in references]
    except PhasescreenError as exc:
        raise from_domain_error(exc) from exc
    duplicates = sorted({r for r in canonical if canonical.count(r) > 1})
    if duplicates:
        raise Problem(
            422,
            "duplicate-models",
            "A model is listed twice",
            f"the {role} list names {', '.join(duplicates)} more than once; list each model once",
        )
    return canonical


def submit_batch(
    session: Session,
    queue: JobQueue,
    request: BatchRequest,
    *,
    settings: ApiSettings,
    caller: Caller = ANONYMOUS,
    idempotency_key: str | None = None,
) -> BatchSubmission:
    """Create (or replay) a batch, commit, then enqueue each job once: the profiles, or pair steps whose
    profiles exist. The same ``idempotency_key`` with the same body answers the first batch; with another
    body, 422."""
    existing = idempotency.find_by_idempotency_key(session, Batch, caller.owner, idempotency_key)
    if existing is not None:
        submission = BatchSubmission(_replay(existing, _fingerprint(request)), created=False)
    else:
        submission = _create(session, request, settings, caller, idempotency_key)
    session.commit()
    # on a replay too: harmless for queued jobs, and recovers a submission whose enqueue failed
    _enqueue_jobs(session, queue, submission.batch)
    return submission


def _enqueue_jobs(session: Session, queue: JobQueue, batch: Batch) -> None:
    jobs: dict[str, JobRef] = {}
    for _, screening in pairs_of(session, batch):
        for job in lifecycle.jobs_to_start(session, screening):
            jobs.setdefault(job.id, job)
    try:
        for job in jobs.values():
            queue.enqueue(job)
    except Exception:  # committed: the reconciler enqueues what is missing once the queue is back
        log.warning("could not enqueue the jobs of batch %s; the reconciler will", batch.id, exc_info=True)


def get_batch(session: Session, batch_id: str, tenant: str | None = None) -> Batch:
    """The batch, if ``tenant`` may see it (``None``: anyone); else 404, as for one that does not exist."""
    batch = session.get(Batch, batch_id) if is_id(batch_id) else None
    if batch is None or (tenant is not None and batch.tenant != tenant):
        raise not_found("batch", batch_id)
    return batch


def pairs_of(session: Session, batch: Batch) -> list[tuple[BatchPair, Screening]]:
    """The cells of ``batch`` with their screenings, row by row."""
    query = (
        select(BatchPair, Screening)
        .join(Screening, Screening.id == BatchPair.screening_id)
        .where(BatchPair.batch_id == batch.id)
        .order_by(BatchPair.vision_index, BatchPair.language_index)
    )
    return [(pair, screening) for pair, screening in session.execute(query).tuples()]


def _figures(result: ScreeningResult | None) -> dict[str, Any]:
    """The matrix cell's headline figures, read from the typed result."""
    row = engine_batch.pair_row({"vision": "", "language": "", "result": result})
    return {
        key: row[key]
        for key in (
            "s_ntk_cross", "s_ntk_cross_centered", "cka", "alignment_score", "failed", "outcome", "combined_rule"
        )
    }


def batch_out(session: Session, batch: Batch) -> BatchOut:
    """Progress, pair and profile counts, and the matrix of ``batch``."""
    cells = pairs_of(session, batch)
    rows = [screening for _, screening in cells]
    profiles = load_profiles(session, rows)
    vision, language = batch.request["vision"], batch.request["language"]
    matrix: list[list[BatchCell]] = [[] for _ in vision]
    progress = 0.0
    for pair, screening in cells:
        out = screening_out(screening, profiles, include_result=False)
        progress += out.progress
        matrix[pair.vision_index].append(
            BatchCell(
                vision=vision[pair.vision_index],
                language=language[pair.language_index],
                vision_index=pair.vision_index,
                language_index=pair.language_index,
                screening_id=screening.id,
                state=screening.state,
                progress=out.progress,
                href=screening_href(screening.id),
                **_figures(screening.result),
            )
        )
    states = [screening.state for screening in rows]
    profile_states = [p.state for p in profiles.values()]
    href = batch_href(batch.id)
    return BatchOut(
        id=batch.id,
        name=batch.name,
        state=engine_batch.batch_state(states),
        progress=progress / len(cells) if cells else 0.0,
        pairs=_counts(states),
        profiles=_counts(profile_states),
        dataset=batch.dataset_ref,
        options=batch.request["options"],
        vision=vision,
        language=language,
        matrix=matrix,
        created_at=batch.created_at,
        href=href,
        links={
            "results_csv": f"{href}/results.csv",
            "results_json": f"{href}/results.json",
            "report": f"{href}/report",
        },
    )


def _counts(states: list[str]) -> dict[str, int]:
    counts = {state: 0 for state in ("queued", "running", "succeeded", "failed", "cancelled")}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    counts["total"] = len(states)
    return counts


def batch_results(session: Session, batch: Batch) -> dict[str, Any]:
    """The results of a stored batch (``results.json``, the input of reports): the batch document of
    ``phasecore.screening.batch`` built from its rows."""
    request = batch.request
    grid = engine_batch.Grid(
        vision=tuple(request["vision"]),
        language=tuple(request["language"]),
        dataset=batch.dataset_ref,
        options=request["options"],
        name=batch.name,
    )
    entries = [
        {
            "vision": screening.vision_ref,
            "language": screening.language_ref,
            "vision_index": pair.vision_index,
            "language_index": pair.language_index,
            "state": screening.state,
            "screening_id": screening.id,
            "result": None if screening.result is None else screening.result.model_dump(mode="json"),
            "problem": None if screening.problem is None else screening.problem.as_json(),
        }
        for pair, screening in pairs_of(session, batch)
    ]
    return engine_batch.batch_document(
        grid,
        grid.settings(),
        entries,
        batch_id=batch.id,
        created_at=batch.created_at.isoformat(),
    )
