"""Screenings through the API: check and submit a request, read, list and cancel screenings, read a profile.

Plain functions over a session that the routes call; what the CLI's local mode shares with them (a request's
fingerprint, finding a screening, recording a result computed elsewhere) is ``jobs.screenings``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.queue import JobQueue
from jobs.screenings import NormalizedRequest, decode_cursor, encode_cursor, get_screening
from phasecore.errors import InvalidSettings, PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.references.registry import model_version
from phasecore.settings import EngineSettings, check_compute, check_memory, profile_key
from problems import Problem, from_domain_error, not_found
from service.contract import check_dataset_syntax, check_reference_syntax
from service.schemas import ScreeningOut, ScreeningRequest, engine_settings
from service.settings import ApiSettings
from service.views import screening_out
from store import idempotency
from store.apikeys import ANONYMOUS, Caller
from store.models import (
    ACTIVE_STATES,
    CANCELLED,
    QUEUED,
    SUCCEEDED,
    TERMINAL_STATES,
    Screening,
    StoredProfile,
    is_id,
    utcnow,
)
from store.profiles import ProfileSpec, get_or_create_profiles
from store.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    screening: Screening
    created: bool  # False: an Idempotency-Key replay of an earlier submission
    profiles: dict[str, StoredProfile]  # the screening's profiles by id, as read after the commit


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
    """The engine's request check (``validate_request``): the references' cheap checks (names only, no torch),
    then the dataset's (its labels are read: torchvision sets from their label files, without torchvision);
    remembered when they pass, since a grid or a polling batch script submits the same few combinations again
    and again. Failures are not remembered."""
    from phasecore.screening.validation import validate_request  # sklearn's bundled digits: imported on first use

    validate_request(
        vision,
        language,
        dataset,
        options,
        allowed_sources=allowed_sources,
        model_root=model_root,
        data_root=data_root,
        allowed_models=allowed_models,
    )


def warm_request_checks() -> None:
    """Import what checking a dataset needs (scikit-learn, ~1 s, no torch) and read the bundled digits once,
    so the first submissions after start-up do not queue behind it. The app calls this before serving."""
    from phasecore.data import sample_labels

    sample_labels("digits", n=10, seed=0)


def _checked(request: ScreeningRequest, settings: ServiceSettings) -> NormalizedRequest:
    """:func:`normalize_request`, a domain error raised as its problem."""
    try:
        return normalize_request(request, settings)
    except PhasescreenError as exc:
        raise from_domain_error(exc) from exc


def _replay(existing: Screening, normalized: NormalizedRequest) -> Screening:
    return idempotency.replay(existing, normalized.fingerprint, f"screening {existing.id}", screening_id=existing.id)


def create_screening(
    session: Session,
    request: ScreeningRequest,
    *,
    settings: ServiceSettings,
    caller: Caller = ANONYMOUS,
    idempotency_key: str | None = None,
) -> Screening:
    """Insert a screening (and get-or-create its two profiles). Flushes, does not commit.

    With reuse on, an identical request that already succeeded is answered by a new screening that is
    born ``succeeded`` and carries the stored result. A ``caller`` whose view is its tenant's (keys required)
    reuses only a result of that tenant and gets the tenant's own profiles, so nothing of another tenant is
    served or named. Raises :class:`Problem` on invalid input.
    """
    return _create(session, request, settings, caller, idempotency_key)[0]


def tenant_profile_key(key: str, tenant: str | None) -> str:
    """The profile key of a tenant's own profile (``None``: the one shared by the whole deployment)."""
    return key if tenant is None else hashlib.sha256(f"tenant:{tenant}\n{key}".encode()).hexdigest()


def check_capacity(session: Session, settings: ApiSettings, tenant: str | None, adding: int = 1) -> None:
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
    settings: ServiceSettings,
    caller: Caller,
    idempotency_key: str | None,
) -> tuple[Screening, bool, frozenset[str]]:
    """(the screening, whether it is new (not an Idempotency-Key replay), the ids of the profiles this call
    inserted)."""
    normalized = _checked(request, settings)
    reuse = settings.reuse_results if request.reuse is None else request.reuse
    fresh: set[str] = set()
    scope = caller.visible_tenant
    source = _finished_twin(session, normalized.fingerprint, scope) if reuse else None
    screening = normalized.screening(
        owner=caller.owner,
        tenant=caller.tenant,
        idempotency_key=idempotency_key,
        state=QUEUED,
        progress=0.0,
        attempts=0,
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
            session, specs, admit=lifecycle.admit_profile, inserted=fresh
        )
    screening, created = idempotency.insert_once(session, screening, lambda existing: _replay(existing, normalized))
    return screening, created, frozenset(fresh) if created else frozenset()


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
    settings: ApiSettings,
    caller: Caller = ANONYMOUS,
    idempotency_key: str | None = None,
) -> Submission:
    """Create (or replay) a screening, commit, then enqueue its jobs: the queue never sees uncommitted ids."""
    existing = idempotency.find_by_idempotency_key(session, Screening, caller.owner, idempotency_key)
    if existing is not None:
        screening = _replay(existing, _checked(request, settings))
        # harmless if queued; recovers a submission whose enqueue failed
        return Submission(screening, False, _enqueue(session, queue, screening))
    check_capacity(session, settings, caller.visible_tenant)
    screening, created, fresh = _create(session, request, settings, caller, idempotency_key)
    session.commit()
    return Submission(screening, created, _enqueue(session, queue, screening, fresh))


def _enqueue(
    session: Session, queue: JobQueue, screening: Screening, fresh: frozenset[str] = frozenset()
) -> dict[str, StoredProfile]:
    """Enqueue what the committed ``screening`` needs; returns its profiles by id, read once after the commit
    for both the decision and the response. ``fresh``: ids of profiles this request inserted. When both are,
    they were ``queued`` at the commit and nothing is read: the response says so, and their jobs are enqueued
    (a concurrent submission that enqueued one first makes that a no-op: jobs are unique)."""
    ids = [pid for pid in (screening.vision_profile_id, screening.language_profile_id) if pid]
    if ids and fresh.issuperset(ids):
        # values as they were committed, for the response and the decision only: never added to the session
        profiles = [StoredProfile(id=pid, state=QUEUED, stage=None, progress=0.0) for pid in ids]
    else:
        profiles = lifecycle.active_profiles_of(session, screening)
    try:
        for job in lifecycle.jobs_to_start(session, screening, profiles):
            queue.enqueue(job)
    except Exception:  # the row is committed: the reconciler enqueues it once the queue is back
        log.warning("could not enqueue screening %s; the reconciler will", screening.id, exc_info=True)
    return {profile.id: profile for profile in profiles}


_SCREENINGS = Screening.__table__
_VISION = StoredProfile.__table__.alias("vision_profile")
_LANGUAGE = StoredProfile.__table__.alias("language_profile")
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
    if is_id(screening_id):
        row = session.execute(_READ_ONE.where(_SCREENINGS.c.id == screening_id)).mappings().first()
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise not_found("screening", screening_id)
    screening = Screening(**{column.key: row[column.key] for column in _SCREENINGS.columns})  # transient
    profiles = {}
    for modality in ("vision", "language"):
        values = {name: row[f"{modality}_profile__{name}"] for name in _SUMMARY}
        if values["id"] is not None:
            profiles[values["id"]] = StoredProfile(**values)
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


def get_profile(session: Session, profile_id: str, tenant: str | None = None) -> StoredProfile:
    """The profile, if ``tenant`` (``None``: anyone) has a screening that uses it; else 404."""
    profile = session.get(StoredProfile, profile_id) if is_id(profile_id) else None
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
