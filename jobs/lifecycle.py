"""State transitions of profiles and screenings, shared by the API, the job functions and the reconciler.

Every transition is a conditional UPDATE, so two workers, a retry and the reconciler can race on the same row
and exactly one wins. A running job holds a *lease* (``lease_token`` + ``heartbeat_at``): it renews it while
alive, and any write it makes is conditional on still holding it. A cancelled or reassigned job loses the
lease, notices on its next heartbeat, and stops; its late writes match no row. The caller commits.

Heartbeats, start and finish times, and the reconciler's cut-offs come from the database's clock
(:class:`store.models.db_now`), never a worker's own: workers on machines whose clocks drift apart still
agree on whose lease ran out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, exists, func, or_, select, update
from sqlalchemy.orm import Session

from jobs.queue import JobRef
from phasecore.screening.result import ScreeningResult
from problems import Problem, ProblemDocument, problem_document
from store.models import ACTIVE_STATES, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Screening, StoredProfile, db_now

JobRow = type[StoredProfile] | type[Screening]


@dataclass(frozen=True)
class Lease:
    """Proof that this worker owns a running row."""

    table: JobRow
    row_id: str
    token: str


@dataclass(frozen=True)
class ProfileClaim:
    lease: Lease
    model_ref: str
    modality: str
    dataset_ref: str
    settings: dict[str, Any]
    attempt: int


@dataclass(frozen=True)
class PairClaim:
    lease: Lease
    request: dict[str, Any]
    vision_profile_id: str
    language_profile_id: str
    attempt: int


def gave_up_problem(what: str, attempts: int, last_detail: str | None) -> ProblemDocument:
    """The problem of a job that failed ``attempts`` times; ``last_detail``: how its last attempt ended."""
    reason = f" The last attempt ended with: {last_detail}" if last_detail else ""
    return problem_document(
        500,
        "attempts-exhausted",
        "Gave up after repeated failures",
        f"the {what} failed {attempts} times in a row and will not be retried.{reason}",
    )


def worker_lost_problem(what: str, worker: str | None, heartbeat_at: datetime | None) -> ProblemDocument:
    since = heartbeat_at.isoformat() if heartbeat_at else "its start"
    return problem_document(
        500,
        "worker-lost",
        "Worker lost",
        # the worker's name (host:pid) stays in the row and the logs: problem documents carry no host names
        f"the worker running the {what} stopped sending heartbeats at {since} "
        "(killed, out of memory, or the machine went away)",
    )


def _detail(problem: ProblemDocument | None) -> str | None:
    return problem.detail if problem else None


# --- profiles ------------------------------------------------------------------------------------------


def _changed(session: Session, statement: Any) -> int:
    """Rows an UPDATE matched: how a conditional transition learns whether it won."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _won(session: Session, statement: Any) -> bool:
    """Whether an UPDATE of one row by its id matched it (the transition's conditions held)."""
    return _changed(session, statement) == 1


def waiting_on_profile(profile_id: Any) -> Any:
    """Condition: the screening uses ``profile_id`` (an id, or a column in a correlated subquery)."""
    return or_(Screening.vision_profile_id == profile_id, Screening.language_profile_id == profile_id)


def profile_needed(session: Session, profile_id: str) -> bool:
    """Whether some screening that is neither finished nor cancelled still waits for this profile."""
    query = select(
        exists().where(
            waiting_on_profile(profile_id),
            Screening.state.in_(ACTIVE_STATES),
            Screening.cancel_requested.is_(False),
        )
    )
    return bool(session.scalar(query))


#: failures that cost workers their time or their life: the same request would do it again, so submitting it
#: again does not give it a fresh count of attempts (failures on the input, a missing asset say, cost nothing)
POISON_KINDS = frozenset({"attempts-exhausted", "worker-lost", "out-of-memory", "timeout"})


def poisoned(profile: StoredProfile) -> bool:
    """Whether ``profile`` failed in a way that resubmitting the same request would repeat."""
    return profile.state == FAILED and profile.problem is not None and profile.problem.kind in POISON_KINDS


def poisoned_detail(profile: StoredProfile) -> str:
    last = (profile.problem.detail if profile.problem else "").rstrip(".")
    return (
        f"the {profile.modality} model profile of this request ({profile.model_ref}) with these settings already "
        f"failed {profile.attempts} times, and the same request would fail the same way ({last}). Change the "
        "settings (a smaller n, fewer probes, ...), or have an operator remove the failed profile "
        "(`phasescreen db prune`) once the workers can take it"
    )


def admit_profile(session: Session, profile: StoredProfile) -> None:
    """An existing profile a new screening asks for (``store.profiles.get_or_create_profiles``' ``admit``): a
    poisoned one refuses the request (422 ``poisoned-request``), a failed or cancelled one is queued again."""
    if poisoned(profile):
        raise Problem(422, "poisoned-request", "Request known to fail", poisoned_detail(profile), profile_id=profile.id)
    reset_profile_if_finished_badly(session, profile)


def reset_profile_if_finished_badly(session: Session, profile: StoredProfile) -> bool:
    """Give a failed or cancelled profile another chance when a new screening asks for it; never a poisoned
    one (see :func:`poisoned`): its attempts are not reset."""
    if poisoned(profile):
        return False
    changed = _changed(
        session,
        update(StoredProfile)
        .where(StoredProfile.id == profile.id, StoredProfile.state.in_((FAILED, CANCELLED)))
        .values(state=QUEUED, attempts=0, problem=None, stage=None, progress=0.0, finished_at=None)
        .execution_options(synchronize_session=False),
    )
    if changed:
        session.refresh(profile)
    return bool(changed)


def claim_profile(session: Session, profile_id: str, *, worker: str, max_attempts: int) -> ProfileClaim | None:
    """Take a queued profile; ``None`` when it is gone, taken, finished or no longer wanted."""
    row = session.get(StoredProfile, profile_id)
    if row is None or row.state != QUEUED:
        return None
    if row.attempts >= max_attempts:
        fail_profile(session, profile_id, gave_up_problem("profile computation", row.attempts, _detail(row.problem)))
        return None
    if not profile_needed(session, profile_id):
        session.execute(
            update(StoredProfile)
            .where(StoredProfile.id == profile_id, StoredProfile.state == QUEUED)
            .values(state=CANCELLED, finished_at=db_now())
        )
        return None
    # read before the UPDATE: the session may synchronise row.attempts to the incremented value
    attempt = row.attempts + 1
    token, now = str(uuid.uuid4()), db_now()
    claimed = _won(
        session,
        update(StoredProfile)
        .where(StoredProfile.id == profile_id, StoredProfile.state == QUEUED)
        .values(
            state=RUNNING,
            lease_token=token,
            worker=worker,
            heartbeat_at=now,
            attempts=StoredProfile.attempts + 1,
            started_at=now,
            stage="starting",
            progress=0.0,
        ),
    )
    if not claimed:
        return None
    # the screenings waiting for it are visibly running from now on
    session.execute(
        update(Screening)
        .where(waiting_on_profile(profile_id), Screening.state == QUEUED)
        .values(state=RUNNING, started_at=now)
    )
    return ProfileClaim(
        Lease(StoredProfile, profile_id, token),
        row.model_ref,
        row.modality,
        row.dataset_ref,
        dict(row.settings),
        attempt,
    )


def complete_profile(session: Session, lease: Lease, values: dict[str, Any]) -> list[JobRef]:
    """Store a computed profile; returns the pair jobs that became ready (enqueue them after commit)."""
    done = _won(
        session,
        update(StoredProfile)
        .where(
            StoredProfile.id == lease.row_id,
            StoredProfile.lease_token == lease.token,
            StoredProfile.state == RUNNING,
        )
        .values(
            state=SUCCEEDED,
            lease_token=None,
            stage=None,
            progress=1.0,
            problem=None,
            finished_at=db_now(),
            **values,
        ),
    )
    if not done:
        return []
    # Two profiles of one screening finishing at once: each transaction would read the other profile as still
    # running (its update is not committed) and neither would start the pair. Locking the waiting screenings
    # (in id order, no deadlock) serialises the two completions: the second waits for the first to commit, and
    # its readiness query, a new statement, then sees both profiles computed.
    session.execute(
        select(Screening.id)
        .where(waiting_on_profile(lease.row_id), Screening.state.in_(ACTIVE_STATES))
        .order_by(Screening.id)
        .with_for_update()
    ).all()
    return [JobRef("pair", screening_id) for screening_id in ready_pairs(session, lease.row_id)]


def ready_pairs(session: Session, profile_id: str) -> list[str]:
    """Active screenings using ``profile_id`` whose profiles are both computed and whose pair step is free."""
    vision, language = StoredProfile.__table__.alias("v"), StoredProfile.__table__.alias("l")
    query = (
        select(Screening.id)
        .join(vision, vision.c.id == Screening.vision_profile_id)
        .join(language, language.c.id == Screening.language_profile_id)
        .where(
            waiting_on_profile(profile_id),
            Screening.state.in_(ACTIVE_STATES),
            Screening.cancel_requested.is_(False),
            Screening.lease_token.is_(None),
            vision.c.state == SUCCEEDED,
            language.c.state == SUCCEEDED,
        )
    )
    return list(session.scalars(query))


def fail_profile(session: Session, profile_id: str, problem: ProblemDocument, lease: Lease | None = None) -> None:
    """Mark a profile failed, and with it every screening still waiting for it."""
    condition = [StoredProfile.id == profile_id, StoredProfile.state.in_(ACTIVE_STATES)]
    if lease is not None:
        condition.append(StoredProfile.lease_token == lease.token)
    row = session.execute(
        update(StoredProfile)
        .where(*condition)
        .values(state=FAILED, lease_token=None, problem=problem, finished_at=db_now())
        .returning(StoredProfile.modality)
    ).first()
    if row is not None:
        fail_waiting_screenings(session, profile_id, row.modality, problem)


def fail_waiting_screenings(
    session: Session, profile_id: str, modality: str, problem: ProblemDocument | None
) -> int:
    """Fail every screening still waiting for a failed profile, with the profile's problem (``None``: a generic
    one) and a detail that says which profile."""
    problem = problem or problem_document(500, "profile-failed", "Model profile failed", "no reason was recorded")
    detail = f"the {modality} model profile could not be computed: {problem.detail}"
    return _changed(
        session,
        update(Screening)
        .where(
            waiting_on_profile(profile_id),
            Screening.state.in_(ACTIVE_STATES),
            Screening.lease_token.is_(None),
        )
        .values(state=FAILED, problem=problem.model_copy(update={"detail": detail}), finished_at=db_now()),
    )


def fail_job(session: Session, lease: Lease, problem: ProblemDocument) -> None:
    """Fail the row ``lease`` holds: a profile (and with it every screening still waiting for it) or a
    screening's pair step."""
    if lease.table is StoredProfile:
        fail_profile(session, lease.row_id, problem, lease)
    else:
        fail_screening(session, lease.row_id, problem, lease)


def cancel_profile(session: Session, lease: Lease) -> None:
    session.execute(
        update(StoredProfile)
        .where(StoredProfile.id == lease.row_id, StoredProfile.lease_token == lease.token)
        .values(state=CANCELLED, lease_token=None, stage=None, finished_at=db_now())
    )


def cancel_screening(session: Session, screening_id: str) -> bool:
    """Cancel a screening that is still queued or running; ``False`` when it had already finished (a worker
    completed or failed it since the caller read it): a terminal state never changes."""
    return _won(
        session,
        update(Screening)
        .where(Screening.id == screening_id, Screening.state.in_(ACTIVE_STATES))
        .values(state=CANCELLED, cancel_requested=True, lease_token=None, finished_at=db_now())
        .execution_options(synchronize_session=False),
    )


# --- pair step -----------------------------------------------------------------------------------------


def claim_pair(session: Session, screening_id: str, *, worker: str, max_attempts: int) -> PairClaim | None:
    """Take the pair step of a screening whose two profiles are computed; ``None`` when not (yet) runnable."""
    row = session.get(Screening, screening_id)
    if row is None or row.state not in ACTIVE_STATES or row.cancel_requested or row.lease_token is not None:
        return None
    profiles: list[StoredProfile] = []
    for profile_id in (row.vision_profile_id, row.language_profile_id):
        profile = session.get(StoredProfile, profile_id) if profile_id else None
        if profile is None or profile.state == FAILED:
            problem = (profile.problem if profile else None) or problem_document(
                500, "profile-missing", "Model profile missing", "a model profile of this screening is gone"
            )
            fail_screening(session, screening_id, problem)
            return None
        profiles.append(profile)
    if any(profile.state != SUCCEEDED for profile in profiles):
        return None  # the last profile to finish enqueues this step again
    if row.attempts >= max_attempts:
        fail_screening(session, screening_id, gave_up_problem("pair step", row.attempts, _detail(row.problem)))
        return None
    attempt = row.attempts + 1  # before the UPDATE, as in claim_profile
    token, now = str(uuid.uuid4()), db_now()
    claimed = _won(
        session,
        update(Screening)
        .where(
            Screening.id == screening_id,
            Screening.state.in_(ACTIVE_STATES),
            Screening.lease_token.is_(None),
            Screening.cancel_requested.is_(False),
        )
        .values(
            state=RUNNING,
            lease_token=token,
            worker=worker,
            heartbeat_at=now,
            attempts=Screening.attempts + 1,
            started_at=func.coalesce(Screening.started_at, now),
            stage="pair",
            progress=0.0,
        ),
    )
    if not claimed:
        return None
    return PairClaim(
        Lease(Screening, screening_id, token),
        dict(row.request),
        profiles[0].id,
        profiles[1].id,
        attempt,
    )


def complete_pair(session: Session, lease: Lease, result: ScreeningResult) -> bool:
    """Store ``result`` and mark the screening succeeded, if ``lease`` still holds it (else False: another
    worker took it over, or it was cancelled)."""
    return _won(
        session,
        update(Screening)
        .where(
            Screening.id == lease.row_id,
            Screening.lease_token == lease.token,
            Screening.state == RUNNING,
            Screening.cancel_requested.is_(False),
        )
        .values(
            state=SUCCEEDED,
            result=result,
            lease_token=None,
            stage=None,
            progress=1.0,
            problem=None,
            finished_at=db_now(),
        ),
    )


def fail_screening(
    session: Session, screening_id: str, problem: ProblemDocument, lease: Lease | None = None
) -> None:
    condition = [Screening.id == screening_id, Screening.state.in_(ACTIVE_STATES)]
    if lease is not None:
        condition.append(Screening.lease_token == lease.token)
    session.execute(
        update(Screening)
        .where(*condition)
        .values(state=FAILED, lease_token=None, problem=problem, finished_at=db_now())
    )


# --- leases --------------------------------------------------------------------------------------------


def renew_lease(session: Session, lease: Lease) -> bool:
    """Heartbeat; ``False`` when the lease is gone (cancelled, or given to another worker)."""
    table = lease.table
    return _won(
        session,
        update(table)
        .where(table.id == lease.row_id, table.lease_token == lease.token, table.state == RUNNING)
        .values(heartbeat_at=db_now()),
    )


def record_progress(session: Session, lease: Lease, stage: str, progress: float) -> bool:
    table = lease.table
    return _won(
        session,
        update(table)
        .where(table.id == lease.row_id, table.lease_token == lease.token)
        .values(stage=stage[:64], progress=min(max(progress, 0.0), 1.0), heartbeat_at=db_now()),
    )


def release_for_retry(
    session: Session, lease: Lease, problem: ProblemDocument, *, refund_attempt: bool = False
) -> bool:
    """Hand a row back to the queue after a transient fault; the retry claims it again.

    ``refund_attempt``: the try does not count (an orderly shutdown interrupted it, nothing failed)."""
    table = lease.table
    values: dict[str, Any] = {"lease_token": None, "stage": None, "progress": 0.0, "problem": problem}
    if refund_attempt:
        values["attempts"] = table.attempts - 1
    condition = [table.id == lease.row_id, table.lease_token == lease.token]
    if table is StoredProfile:
        values["state"] = QUEUED
    else:
        condition.append(table.state == RUNNING)  # a screening waits in running; its profiles are done
    return _won(session, update(table).where(*condition).values(**values))


def active_profiles_of(session: Session, screening: Screening) -> list[StoredProfile]:
    ids = [pid for pid in (screening.vision_profile_id, screening.language_profile_id) if pid]
    return list(session.scalars(select(StoredProfile).where(StoredProfile.id.in_(ids))))


def jobs_to_start(
    session: Session, screening: Screening, profiles: list[StoredProfile] | None = None
) -> list[JobRef]:
    """The jobs a just-committed screening needs: its queued profiles, or its pair step if both are done.
    ``profiles``: the screening's profiles as just read after the commit (read here when ``None``)."""
    if screening.state not in ACTIVE_STATES or screening.cancel_requested:
        return []
    if profiles is None:
        profiles = active_profiles_of(session, screening)
    queued = [JobRef("profile", p.id) for p in profiles if p.state == QUEUED]
    if profiles and all(p.state == SUCCEEDED for p in profiles) and screening.lease_token is None:
        return [JobRef("pair", screening.id)]
    return queued
