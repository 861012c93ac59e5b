"""Screenings: create, find, list, cancel, and store a result computed elsewhere (``phasescreen screen``).

Plain functions over a session, shared by the API routes, the CLI and the worker.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.queue import JobQueue
from phasecore import ENGINE_VERSION
from phasecore.errors import InvalidSettings, PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.references.registry import check_reference, model_version
from phasecore.settings import EngineSettings, check_compute, check_memory, profile_key
from service.contract import check_dataset_syntax, check_reference_syntax, is_id
from service.profiles import ProfileSpec, get_or_create_profiles
from service.schemas import ScreeningOut, ScreeningRequest, engine_settings
from service.views import screening_out
from store.models import (
    ACTIVE_STATES,
    CANCELLED,
    QUEUED,
    SUCCEEDED,
    TERMINAL_STATES,
    ModelProfile,
    Screening,
    jsonable,
    utcnow,
)
from store.problems import Problem, from_domain_error, not_found
from store.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalizedRequest:
    vision: str
    language: str
    dataset: str
    options: EngineSettings

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision": self.vision,
            "language": self.language,
            "dataset": self.dataset,
            "options": self.options.model_dump(mode="json"),
        }

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the request and the engine version."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{canonical}\n{ENGINE_VERSION}".encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    screening: Screening
    created: bool  # False: an Idempotency-Key replay of an earlier submission
    profiles: dict[str, ModelProfile]  # the screening's profiles by id, as read after the commit


def normalize_request(request: ScreeningRequest, settings: ServiceSettings) -> NormalizedRequest:
    """Canonical references and checked limits; raises domain errors a user can act on."""
    check_reference_syntax(request.vision, "vision")
    check_reference_syntax(request.language, "language")
    check_dataset_syntax(request.dataset)
    options = engine_settings(request.options)
    if options.n > settings.max_n:
        raise InvalidSettings(f"n={options.n} is above this deployment's limit of {settings.max_n} samples")
    check_memory(options.profile, settings.worker_memory_gb, limit_name="PHASESCREEN_WORKER_MEMORY_GB")
    budget, budget_name = settings.job_seconds_budget
    vision_ref, language_ref = ModelRef.parse(request.vision), ModelRef.parse(request.language)
    for ref in (vision_ref, language_ref):  # one profile job per model; a zoo tower's job trains its run first
        check_compute(options.profile, budget, limit_name=budget_name, models=(ref,))
    vision = vision_ref.canonical()
    language = language_ref.canonical()
    dataset = request.dataset.strip()
    _validate(
        vision,
        language,
        dataset,
        options,
        settings.allowed_sources,
        settings.model_root,
        settings.data_root,
        settings.allowed_models,
    )
    return NormalizedRequest(vision, language, dataset, options)


@functools.lru_cache(maxsize=1024)
def _validate(
    vision: str,
    language: str,
    dataset: str,
    options: EngineSettings,
    allowed_sources: tuple[str, ...],
    model_root: Path | None,
    data_root: Path | None,
    allowed_models: tuple[str, ...] = (),
) -> None:
    """The references' cheap checks (names only, no torch), then the dataset's (it is read, so its loaders are
    imported here, torchvision with them); remembered when they pass, since a grid or a polling batch script
    submits the same few combinations again and again. Failures are not remembered."""
    check_reference(
        vision, "vision", allowed_sources=allowed_sources, model_root=model_root, allowed_models=allowed_models
    )
    check_reference(
        language, "language", allowed_sources=allowed_sources, model_root=model_root, allowed_models=allowed_models
    )
    from phasecore.screening.validation import validate_dataset  # sklearn's bundled digits: imported on first use

    validate_dataset(dataset, options, data_root=data_root)


def warm_request_checks() -> None:
    """Import what checking a dataset needs (scikit-learn, ~1 s, no torch) and read the bundled digits once,
    so the first submissions after start-up do not queue behind it. The app calls this before serving."""
    from phasecore.data import sample_labels

    sample_labels("digits", n=10, seed=0)


def find_by_idempotency_key(session: Session, owner: str, key: str) -> Screening | None:
    return session.scalar(select(Screening).where(Screening.owner == owner, Screening.idempotency_key == key))


def _replay(existing: Screening, normalized: NormalizedRequest) -> Screening:
    if existing.fingerprint != normalized.fingerprint:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was already used with a different request body; use a new key for a new "
            f"request (the key belongs to screening {existing.id})",
            screening_id=existing.id,
        )
    return existing


def create_screening(
    session: Session,
    request: ScreeningRequest,
    *,
    settings: ServiceSettings,
    owner: str = "",
    tenant: str = "",
    isolated: bool = False,
    idempotency_key: str | None = None,
) -> Screening:
    """Insert a screening (and get-or-create its two profiles). Flushes, does not commit.

    With reuse on, an identical request that already succeeded is answered by a new screening that is
    born ``succeeded`` and carries the stored result. ``isolated`` (keys required): only a result of the
    same ``tenant`` is reused and the profiles are the tenant's own, so nothing of another tenant is served
    or named. Raises :class:`Problem` on invalid input.
    """
    return _create(
        session,
        request,
        settings=settings,
        owner=owner,
        tenant=tenant,
        isolated=isolated,
        idempotency_key=idempotency_key,
    )[0]


def tenant_profile_key(key: str, tenant: str | None) -> str:
    """The profile key of a tenant's own profile (``None``: the one shared by the whole deployment)."""
    return key if tenant is None else hashlib.sha256(f"tenant:{tenant}\n{key}".encode()).hexdigest()


def check_capacity(session: Session, settings: ServiceSettings, tenant: str | None, adding: int = 1) -> None:
    """503 ``busy`` when ``adding`` more screenings would pass PHASESCREEN_MAX_ACTIVE_SCREENINGS, counted over
    ``tenant``'s screenings (keys required) or the whole deployment (``None``)."""
    query = select(func.count()).select_from(Screening).where(Screening.state.in_(ACTIVE_STATES))
    if tenant is not None:
        query = query.where(Screening.tenant == tenant)
    active = session.scalar(query) or 0
    if active + adding > settings.max_active_screenings:
        whose = "of this tenant" if tenant is not None else "in this deployment"
        raise Problem(
            503,
            "busy",
            "Too many screenings in progress",
            f"{adding} more screening(s) on top of {active} queued or running {whose} pass the limit of "
            f"{settings.max_active_screenings}; try again later",
            headers={"Retry-After": str(settings.retry_after * 6)},
        )


def _create(
    session: Session,
    request: ScreeningRequest,
    *,
    settings: ServiceSettings,
    owner: str,
    tenant: str = "",
    isolated: bool = False,
    idempotency_key: str | None,
) -> tuple[Screening, bool, frozenset[str]]:
    """(the screening, whether it is new (not an Idempotency-Key replay), the ids of the profiles this call
    inserted)."""
    try:
        normalized = normalize_request(request, settings)
    except PhasescreenError as exc:
        raise from_domain_error(exc) from exc
    reuse = settings.reuse_results if request.reuse is None else request.reuse
    fresh: set[str] = set()
    scope = tenant if isolated else None
    source = _finished_twin(session, normalized.fingerprint, scope) if reuse else None
    screening = Screening(
        owner=owner,
        tenant=tenant,
        idempotency_key=idempotency_key,
        fingerprint=normalized.fingerprint,
        request=normalized.to_dict(),
        vision_ref=normalized.vision,
        language_ref=normalized.language,
        dataset_ref=normalized.dataset,
        state=QUEUED,
        progress=0.0,
        attempts=0,
        cancel_requested=False,
    )
    if source is not None:
        now = utcnow()
        screening.state, screening.progress, screening.result = SUCCEEDED, 1.0, source.result
        screening.reused_from, screening.started_at, screening.finished_at = source.id, now, now
        screening.vision_profile_id = source.vision_profile_id
        screening.language_profile_id = source.language_profile_id
    else:
        settings_json = normalized.options.model_dump(mode="json")
        specs = []
        for modality, ref in (("vision", normalized.vision), ("language", normalized.language)):
            version = model_version(ref, model_root=settings.model_root)
            key = tenant_profile_key(
                profile_key(ref, modality, normalized.dataset, normalized.options, model_version=version), scope
            )
            specs.append(ProfileSpec(key, ref, modality, normalized.dataset, settings_json))
        screening.vision_profile_id, screening.language_profile_id = get_or_create_profiles(
            session, specs, inserted=fresh
        )
    if idempotency_key is None:  # nothing unique to collide on: no savepoint (two round trips) needed
        session.add(screening)
        session.flush()
        return screening, True, frozenset(fresh)
    try:
        with session.begin_nested():
            session.add(screening)
    except IntegrityError:
        # a concurrent request with the same Idempotency-Key won the insert
        existing = find_by_idempotency_key(session, owner, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, normalized), False, frozenset()
    return screening, True, frozenset(fresh)


def _finished_twin(session: Session, fingerprint: str, tenant: str | None) -> Screening | None:
    query = select(Screening).where(
        Screening.fingerprint == fingerprint, Screening.state == SUCCEEDED, Screening.result.is_not(None)
    )
    if tenant is not None:
        query = query.where(Screening.tenant == tenant)
    return session.scalar(query.order_by(Screening.finished_at.desc()).limit(1))


def submit_screening(
    session: Session,
    queue: JobQueue,
    request: ScreeningRequest,
    *,
    settings: ServiceSettings,
    owner: str = "",
    tenant: str = "",
    isolated: bool = False,
    idempotency_key: str | None = None,
) -> Submission:
    """Create (or replay) a screening, commit, then enqueue its jobs: the queue never sees uncommitted ids."""
    if idempotency_key is not None:
        existing = find_by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            try:
                normalized = normalize_request(request, settings)
            except PhasescreenError as exc:
                raise from_domain_error(exc) from exc
            screening = _replay(existing, normalized)
            # harmless if queued; recovers a submission whose enqueue failed
            return Submission(screening, False, _enqueue(session, queue, screening))
    check_capacity(session, settings, tenant if isolated else None)
    screening, created, fresh = _create(
        session,
        request,
        settings=settings,
        owner=owner,
        tenant=tenant,
        isolated=isolated,
        idempotency_key=idempotency_key,
    )
    session.commit()
    return Submission(screening, created, _enqueue(session, queue, screening, fresh))


def _enqueue(
    session: Session, queue: JobQueue, screening: Screening, fresh: frozenset[str] = frozenset()
) -> dict[str, ModelProfile]:
    """Enqueue what the committed ``screening`` needs; returns its profiles by id, read once after the commit
    for both the decision and the response. ``fresh``: ids of profiles this request inserted. When both are,
    they were ``queued`` at the commit and nothing is read: the response says so, and their jobs are enqueued
    (a concurrent submission that enqueued one first makes that a no-op: jobs are unique)."""
    ids = [pid for pid in (screening.vision_profile_id, screening.language_profile_id) if pid]
    if ids and fresh.issuperset(ids):
        # values as they were committed, for the response and the decision only: never added to the session
        profiles = [ModelProfile(id=pid, state=QUEUED, stage=None, progress=0.0) for pid in ids]
    else:
        profiles = lifecycle.active_profiles_of(session, screening)
    try:
        for job in lifecycle.jobs_to_start(session, screening, profiles):
            queue.enqueue(job)
    except Exception:  # the row is committed: the reconciler enqueues it once the queue is back
        log.warning("could not enqueue screening %s; the reconciler will", screening.id, exc_info=True)
    return {profile.id: profile for profile in profiles}


def get_screening(session: Session, screening_id: str, tenant: str | None = None) -> Screening:
    """The screening, if ``tenant`` may see it (``None``: anyone); else 404, as for one that does not exist."""
    screening = session.get(Screening, screening_id) if _looks_like_id(screening_id) else None
    if screening is None or (tenant is not None and screening.tenant != tenant):
        raise not_found("screening", screening_id)
    return screening


_SCREENINGS = Screening.__table__
_VISION = ModelProfile.__table__.alias("vision_profile")
_LANGUAGE = ModelProfile.__table__.alias("language_profile")
_SUMMARY = ("id", "state", "stage", "progress")  # what a screening shows of each of its profiles
_READ_ONE = (
    select(
        _SCREENINGS,
        *(_VISION.c[name].label(f"vision_profile__{name}") for name in _SUMMARY),
        *(_LANGUAGE.c[name].label(f"language_profile__{name}") for name in _SUMMARY),
    )
    .outerjoin(_VISION, _VISION.c.id == _SCREENINGS.c.vision_profile_id)
    .outerjoin(_LANGUAGE, _LANGUAGE.c.id == _SCREENINGS.c.language_profile_id)
)


def read_screening(session: Session, screening_id: str, tenant: str | None = None) -> ScreeningOut:
    """What ``GET /v1/screenings/{id}`` answers: ``screening_out`` of :func:`get_screening` and its profiles,
    read in one Core statement (the screening joined to its two profiles' summaries; no ORM objects loaded
    into the session), 404 alike."""
    row = None
    if _looks_like_id(screening_id):
        row = session.execute(_READ_ONE.where(_SCREENINGS.c.id == screening_id)).mappings().first()
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise not_found("screening", screening_id)
    screening = Screening(**{column.key: row[column.key] for column in _SCREENINGS.columns})  # transient
    profiles = {}
    for modality in ("vision", "language"):
        values = {name: row[f"{modality}_profile__{name}"] for name in _SUMMARY}
        if values["id"] is not None:
            profiles[values["id"]] = ModelProfile(**values)
    return screening_out(screening, profiles)


def cancel_screening(session: Session, screening_id: str, tenant: str | None = None) -> Screening:
    """Cancel a queued or running screening; a running pair step loses its lease and stops.

    Profiles that no other screening waits for stop at their next heartbeat. Commits.
    """
    screening = get_screening(session, screening_id, tenant)
    if screening.state not in TERMINAL_STATES:
        # conditional on the state still being active: a worker may finish the row after the read above
        lifecycle.cancel_screening(session, screening_id)
        session.commit()
        session.refresh(screening)
    if screening.state == CANCELLED:
        return screening
    raise Problem(
        409,
        "not-cancellable",
        "Screening already finished",
        f"screening {screening_id} is {screening.state}; only queued or running ones can be cancelled",
    )


def encode_cursor(screening_id: str) -> str:
    """The cursor of the page after ``screening_id``: the id itself (ids sort by creation)."""
    return screening_id


def decode_cursor(cursor: str) -> str:
    """Any text of the id pattern is a position in the newest-first order (what follows it), so every cursor
    the schema allows is answered; anything else is 400."""
    if not is_id(cursor):
        raise Problem(400, "invalid-cursor", "Invalid cursor", "the cursor is not one this API returned")
    return cursor


def list_screenings(
    session: Session,
    *,
    state: str | None = None,
    model: str | None = None,
    dataset: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    tenant: str | None = None,
) -> tuple[list[Screening], str | None]:
    """Newest first; ``model`` matches the vision or the language reference (canonical form); only
    ``tenant``'s screenings unless it is ``None``."""
    query = select(Screening).order_by(Screening.id.desc()).limit(limit + 1)
    if tenant is not None:
        query = query.where(Screening.tenant == tenant)
    if state:
        query = query.where(Screening.state == state)
    if model:
        try:
            canonical = ModelRef.parse(model).canonical()
        except PhasescreenError:
            canonical = model.strip()
        query = query.where(or_(Screening.vision_ref == canonical, Screening.language_ref == canonical))
    if dataset:
        query = query.where(Screening.dataset_ref == dataset.strip())
    if cursor:
        query = query.where(Screening.id < decode_cursor(cursor))
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def get_profile(session: Session, profile_id: str, tenant: str | None = None) -> ModelProfile:
    """The profile, if ``tenant`` (``None``: anyone) has a screening that uses it; else 404."""
    profile = session.get(ModelProfile, profile_id) if _looks_like_id(profile_id) else None
    if profile is not None and tenant is not None:
        used = session.scalar(
            select(Screening.id)
            .where(
                Screening.tenant == tenant,
                or_(Screening.vision_profile_id == profile.id, Screening.language_profile_id == profile.id),
            )
            .limit(1)
        )
        profile = profile if used is not None else None
    if profile is None:
        raise not_found("model profile", profile_id)
    return profile


def _looks_like_id(value: str) -> bool:
    return is_id(value)


def record_local_result(session: Session, request: dict[str, Any], result: dict[str, Any]) -> Screening:
    """Store a result computed outside the queue (``phasescreen screen``) as a succeeded screening.

    ``request`` is ``{vision, language, dataset, options}``; the references are stored as given when they do
    not parse, since the result was computed already. Flushes, does not commit.
    """

    def canonical(text: Any) -> str:
        try:
            return ModelRef.parse(text).canonical()
        except PhasescreenError:
            return str(text)

    options = EngineSettings.model_validate(request.get("options") or {})
    normalized = NormalizedRequest(
        canonical(request.get("vision", "")),
        canonical(request.get("language", "")),
        str(request.get("dataset", "")).strip(),
        options,
    )
    now = utcnow()
    screening = Screening(
        owner="local",
        fingerprint=normalized.fingerprint,
        request=normalized.to_dict(),
        vision_ref=normalized.vision,
        language_ref=normalized.language,
        dataset_ref=normalized.dataset,
        state=SUCCEEDED,
        stage=None,
        progress=1.0,
        attempts=1,
        cancel_requested=False,
        result=jsonable(result),
        started_at=now,
        finished_at=now,
    )
    session.add(screening)
    session.flush()
    return screening


def store_local_result(request: dict[str, Any], result: dict[str, Any], settings: ServiceSettings | None = None) -> str:
    """One call for the CLI: open the configured store (migrating the embedded file), record, commit."""
    from store.db import local_session

    with local_session(settings) as session:
        screening = record_local_result(session, request, result)
        session.commit()
        return screening.id
