"""The two job functions, each given an id and the runtime of this process (``jobs.runner`` finds it for RQ).

A job claims its row, runs the engine with a :class:`~jobs.tracker.JobTracker` as progress callback, and
writes the outcome through the lease. Outcomes:

- domain error (bad reference, unsupported model, ...): failed with that problem, never retried;
- time limit: failed, not retried (the same job would time out again);
- out of memory (host or GPU) while the job computes: failed, not retried (the same job would run out again);
- out of memory while a model loads, however the loader reported it: retried like the next case, after the
  models this process keeps loaded are let go (other jobs' models held the memory, not this model's fault);
- anything else (database or network blip, a bug): the row goes back to ``queued`` and the exception
  propagates so the queue retries it with backoff, until PHASESCREEN_MAX_ATTEMPTS is reached;
- cancelled: nothing more is written (the canceller did).

The final write of a finished job (its profile, or its result) is tried again across a short database outage
(:func:`final_write`): the work is done, and losing it to a connection blip would cost a whole recomputation.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from jobs import lifecycle, prometheus
from jobs.encoders import EncoderCache
from jobs.queue import JobRef
from jobs.runtime import Runtime
from jobs.tracker import JobStopped, JobTimedOut, JobTracker
from phasecore.errors import PhasescreenError, UnsupportedModel
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings
from problems import ProblemDocument, from_domain_error, problem_document
from store import logs
from store.batch_models import BatchPair
from store.jobstats import record_stage_durations
from store.models import Screening, StoredProfile, jsonable
from store.records import with_measured_rules

log = logging.getLogger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
_encoder_caches: weakref.WeakKeyDictionary[Runtime, EncoderCache] = weakref.WeakKeyDictionary()


def _encoders(rt: Runtime) -> EncoderCache:
    cache = _encoder_caches.get(rt)
    if cache is None:
        cache = _encoder_caches.setdefault(rt, EncoderCache(rt.settings.encoder_cache_size))
    return cache


def _hard_timeouts() -> tuple[type[BaseException], ...]:
    try:  # RQ's own (SIGALRM) timeout backs up the tracker's deadline
        from rq.timeouts import JobTimeoutException

        return (JobTimedOut, JobTimeoutException)
    except ImportError:  # pragma: no cover - rq is a dependency
        return (JobTimedOut,)


def _timeout_problem(exc: BaseException) -> ProblemDocument:
    # a fixed text: problem documents carry no raw exception text
    detail = "the job ran past its time limit (PHASESCREEN_JOB_TIMEOUT)"
    return problem_document(500, "timeout", "Job timed out", detail)


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _out_of_memory(exc: BaseException | None) -> BaseException | None:
    """``exc``, or the exception it was raised from, that is the host or a GPU running out of memory."""
    seen: set[int] = set()
    torch = sys.modules.get("torch")  # no torch loaded, no torch OOM
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)):
            return exc
        if isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _OOM_WORDS):
            return exc  # allocator failures that torch reports as plain RuntimeErrors
        exc = exc.__cause__ or exc.__context__
    return None


def _release_memory(rt: Runtime) -> None:
    """Let go of the cached models (and the GPU memory torch holds for them) before a retry."""
    _encoders(rt).clear()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _LoadOutOfMemory(Exception):  # noqa: N818 - carries the loader's exception as its cause
    """Memory ran out while a model loaded: transient, tried again."""


def _out_of_memory_problem(kind: str, exc: BaseException) -> ProblemDocument:
    return problem_document(
        500,
        "out-of-memory",
        "Out of memory",
        f"the {kind} job ran out of memory while computing ({type(exc).__name__}); it is not retried, "
        "since it would run out again. Use a smaller n, fewer probes, a smaller chunk_size or "
        "memory_budget_gb, or a worker with more memory",
    )


def _check_size(identity: dict[str, Any], max_params: int) -> None:
    n_params = int(identity.get("n_params") or 0)
    if n_params > max_params:
        raise UnsupportedModel(
            f"model {identity.get('ref', '?')} has {n_params:,} parameters, above this deployment's limit of "
            f"{max_params:,} (PHASESCREEN_MAX_PARAMS)"
        )


T = TypeVar("T")

#: first pause before a final write is tried again; it doubles up to _FINAL_WRITE_MAX_PAUSE
_FINAL_WRITE_FIRST_PAUSE = 0.25
_FINAL_WRITE_MAX_PAUSE = 5.0


def _transient_db_error(exc: BaseException) -> bool:
    """A lost or refused connection (the database restarting, a network cut), not a fault of the statement."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def final_write(rt: Runtime, what: str, write: Callable[[Session], T]) -> T:
    """Run ``write(session)`` and commit, trying again with backoff while the database is unreachable, for up to
    PHASESCREEN_LEASE_TIMEOUT seconds: the lease this write is conditional on is still ours for about that long
    after the last heartbeat (later, the reconciler may have handed the row on, and the write then matches no
    row: harmless). Other errors, and the last transient one, propagate."""
    deadline = time.monotonic() + rt.settings.lease_timeout
    pause = _FINAL_WRITE_FIRST_PAUSE
    tries = 0
    while True:
        tries += 1
        try:
            with rt.session() as session:
                value = write(session)
                session.commit()
        except Exception as exc:
            if not _transient_db_error(exc) or time.monotonic() + pause > deadline:
                raise
            prometheus.FINAL_WRITE_RETRIES.inc()
            log.warning("%s: database unreachable (try %d), trying again in %.2g s: %s", what, tries, pause, exc)
            time.sleep(pause)
            pause = min(pause * 2, _FINAL_WRITE_MAX_PAUSE)
            continue
        if tries > 1:
            log.info("%s: written after %d tries", what, tries)
        return value


def _array_index(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)} for name, a in arrays.items()}


def run_profile_job(profile_id: str, *, runtime: Runtime) -> str:
    """Compute one model profile (or do nothing if it is not queued any more); its log lines carry its id."""
    with logs.bind(profile_id=profile_id):
        return _run_profile_job(profile_id, runtime=runtime)


def _run_profile_job(profile_id: str, *, runtime: Runtime) -> str:
    from phasecore.screening.pipeline import compute_profile

    rt = runtime
    settings = rt.settings
    with rt.session() as session:
        claim = lifecycle.claim_profile(session, profile_id, worker=WORKER_NAME, max_attempts=settings.max_attempts)
        session.commit()
    if claim is None:
        return "skipped"
    started = time.monotonic()
    log.info(
        "profile %s: %s (%s) on %s, attempt %d",
        profile_id,
        claim.model_ref,
        claim.modality,
        claim.dataset_ref,
        claim.attempt,
    )
    tracker = JobTracker(
        rt, claim.lease, kind="profile", still_wanted=partial(lifecycle.profile_needed, profile_id=profile_id)
    )
    engine_settings = EngineSettings.model_validate(claim.settings)
    try:
        with tracker, _encoders(rt).exclusive(claim.model_ref, waiting=lambda: tracker("waiting for the model", 0.0)):
            tracker("loading", 0.0)
            try:
                encoder = _encoders(rt).get(
                    claim.model_ref,
                    pooling=engine_settings.language_pooling if claim.modality == "language" else None,
                    model_root=settings.model_root,
                    allowed_sources=settings.allowed_sources,
                    device=settings.device,
                    max_params=settings.max_params,  # counted before any weight is read or fetched
                )
            except Exception as exc:
                oom = _out_of_memory(exc)  # loaders may wrap it as an unsupported model or missing weights
                if oom is not None:
                    raise _LoadOutOfMemory(str(oom)) from oom
                raise
            _check_size(encoder.identity.to_dict(), settings.max_params)  # before hours of work, not after
            profile = compute_profile(
                claim.model_ref,
                claim.modality,
                claim.dataset_ref,
                engine_settings,
                model_root=settings.model_root,
                data_root=settings.data_root,
                allowed_sources=settings.allowed_sources,
                progress=tracker,
                encoder=encoder,
            )
            tracker.check()
            blob = profile.to_bytes()
    except Exception as exc:
        return _finish(rt, tracker, "profile", _after(rt, claim.lease, claim.attempt, "profile", exc), started)
    values = {
        "data": blob,
        "identity": jsonable(profile.identity),
        "meta": jsonable(profile.meta),
        "arrays": _array_index(profile.arrays),
        "size_bytes": len(blob),
    }
    ready = final_write(
        rt, f"profile {profile_id}", lambda session: lifecycle.complete_profile(session, claim.lease, values)
    )
    _enqueue_all(rt, ready)
    return _finish(rt, tracker, "profile", "succeeded", started)


def run_pair_job(screening_id: str, *, runtime: Runtime) -> str:
    """Screen a pair from its two stored profiles (or do nothing if it is not runnable); its log lines carry the
    screening id, its tenant and its batch."""
    with logs.bind(screening_id=screening_id, **_pair_context(runtime, screening_id)):
        return _run_pair_job(screening_id, runtime=runtime)


def _pair_context(rt: Runtime, screening_id: str) -> dict[str, str | None]:
    """The tenant and batch of a screening, for its log lines (none when the database cannot say)."""
    try:
        with rt.session() as session:
            tenant = session.scalar(select(Screening.tenant).where(Screening.id == screening_id))
            batch_id = session.scalar(select(BatchPair.batch_id).where(BatchPair.screening_id == screening_id))
    except Exception:  # the job itself will meet the database and say what is wrong
        return {}
    return {"tenant": tenant or None, "batch_id": batch_id}


def _run_pair_job(screening_id: str, *, runtime: Runtime) -> str:
    from phasecore.screening.pipeline import screen_pair

    rt = runtime
    with rt.session() as session:
        claim = lifecycle.claim_pair(session, screening_id, worker=WORKER_NAME, max_attempts=rt.settings.max_attempts)
        session.commit()
    if claim is None:
        return "skipped"
    log.info(
        "pair %s: %s × %s on %s, attempt %d",
        screening_id,
        claim.request.get("vision"),
        claim.request.get("language"),
        claim.request.get("dataset"),
        claim.attempt,
    )
    started = time.monotonic()
    tracker = JobTracker(rt, claim.lease, kind="pair")
    try:
        with tracker:
            with rt.session() as session:
                blobs = dict(
                    session.execute(
                        select(StoredProfile.id, StoredProfile.data).where(
                            StoredProfile.id.in_([claim.vision_profile_id, claim.language_profile_id])
                        )
                    ).all()
                )
            vision, language = (_stored(blobs, pid) for pid in (claim.vision_profile_id, claim.language_profile_id))
            result = screen_pair(
                vision,
                language,
                EngineSettings.model_validate(claim.request["options"]),
                dataset_ref=claim.request["dataset"],
                progress=tracker,
            )
            tracker.check()
    except Exception as exc:
        return _finish(rt, tracker, "pair", _after(rt, claim.lease, claim.attempt, "pair", exc), started)
    # the typed result, with each rule's measured figures beside its claim; the column stores its JSON form
    stored_result = _with_measured_rules(rt, result, screening_id)
    stored = final_write(
        rt, f"screening {screening_id}", lambda session: lifecycle.complete_pair(session, claim.lease, stored_result)
    )
    return _finish(rt, tracker, "pair", "succeeded" if stored else "cancelled", started)


def _after(rt: Runtime, lease: lifecycle.Lease, attempt: int, kind: str, exc: Exception) -> str:
    """What becomes of a ``kind`` job (profile or pair) that raised ``exc``, as this module's docstring lists:
    its outcome, ``cancelled`` or ``failed``; ``exc`` is raised again when the row goes back to the queue for
    a retry."""
    what = "profile computation" if kind == "profile" else "pair step"
    if isinstance(exc, JobStopped):
        _stopped(rt, lease, exc)
        return "cancelled"
    if isinstance(exc, _hard_timeouts()):
        _fail(rt, lease, _timeout_problem(exc), kind)
    elif isinstance(exc, _LoadOutOfMemory):
        _release_memory(rt)
        _retry_or_give_up(rt, lease, attempt, exc.__cause__ or exc, what)
    elif isinstance(exc, PhasescreenError):
        _fail(rt, lease, from_domain_error(exc).document(), kind)
    elif _out_of_memory(exc) is not None:
        if kind == "profile":  # the models this process keeps loaded let go too (a pair step loads none)
            _release_memory(rt)
        _fail(rt, lease, _out_of_memory_problem(kind, exc), kind)
    else:
        _retry_or_give_up(rt, lease, attempt, exc, what)
    return "failed"


def run_job(runtime: Runtime, job: JobRef) -> None:
    """Run one job in this process (the in-process executor's runner)."""
    run = run_profile_job if job.kind == "profile" else run_pair_job
    run(job.id, runtime=runtime)


def _with_measured_rules(rt: Runtime, result: ScreeningResult, screening_id: str) -> ScreeningResult:
    """Each rule's measured accuracy beside the paper's claim: over the stored pairs the screening's owner may
    see (its tenant's when keys are required, every one in anonymous mode), or the shipped evidence; a result
    stands without it."""
    try:
        with rt.session() as session:
            tenant = None
            if rt.settings.require_api_key:
                tenant = session.scalar(select(Screening.tenant).where(Screening.id == screening_id)) or ""
            return with_measured_rules(session, result, tenant=tenant)
    except Exception:
        log.warning("screening %s: the rules' measured accuracy could not be attached", screening_id, exc_info=True)
        return result


def _stopped(rt: Runtime, lease: lifecycle.Lease, stop: JobStopped) -> None:
    """After the tracker stopped a job: a shutdown hands the row back for the next start, a profile no one
    waits for is cancelled, a lost lease needs nothing (whoever took it wrote already)."""
    if stop.lease_lost:
        return
    with rt.session() as session:
        if stop.shutting_down:
            interrupted = problem_document(500, "interrupted", "Interrupted", "the process running it shut down")
            lifecycle.release_for_retry(session, lease, interrupted, refund_attempt=True)
        elif lease.table is StoredProfile:
            lifecycle.cancel_profile(session, lease)
        session.commit()


def _stored(blobs: dict[str, bytes | None], profile_id: str) -> Any:
    from phasecore.screening.pipeline import ModelProfile

    blob = blobs.get(profile_id)
    if blob is None:  # transient by nature: a profile that succeeded always has its blob
        raise LookupError(f"model profile {profile_id} has no stored arrays")
    return ModelProfile.from_bytes(blob)


def _finish(rt: Runtime, tracker: JobTracker, kind: str, outcome: str, started: float) -> str:
    log.info("%s job %s in %.1f s", kind, outcome, time.monotonic() - started, extra={"outcome": outcome})
    prometheus.JOBS.labels(kind, outcome).inc()
    prometheus.JOB_SECONDS.labels(kind, outcome).observe(time.monotonic() - started)
    try:
        with rt.session() as session:
            record_stage_durations(session, kind, tracker.durations)
            session.commit()
    except Exception:  # statistics must never fail a job
        log.warning("could not record stage durations", exc_info=True)
    return outcome


def _fail(rt: Runtime, lease: lifecycle.Lease, problem: ProblemDocument, kind: str) -> None:
    prometheus.FAILURES.labels(kind, problem.kind).inc()
    with rt.session() as session:
        lifecycle.fail_job(session, lease, problem)
        session.commit()


def _retry_or_give_up(rt: Runtime, lease: lifecycle.Lease, attempt: int, exc: BaseException, what: str) -> None:
    """Release the row for the queue's retry (re-raising ``exc``), or fail it once attempts are spent."""
    # the exception's type only: its text (paths, hosts, library internals) goes to the log, not to clients
    detail = f"the {what} failed with {type(exc).__name__}"
    log.warning("%s %s failed (attempt %d): %s", what, lease.row_id, attempt, exc, exc_info=exc)
    if attempt >= rt.settings.max_attempts:
        log.error("%s %s failed on its last attempt", what, lease.row_id, exc_info=exc)
        problem = lifecycle.gave_up_problem(what, attempt, detail)
        _fail(rt, lease, problem, "profile" if lease.table is StoredProfile else "pair")
        return
    prometheus.FAILURES.labels("profile" if lease.table is StoredProfile else "pair", "retrying").inc()
    problem = problem_document(
        500,
        "retrying",
        "Retrying after a fault",
        f"{detail}; attempt {attempt} of {rt.settings.max_attempts}",
    )
    with rt.session() as session:
        lifecycle.release_for_retry(session, lease, problem)
        session.commit()
    raise exc


def _enqueue_all(rt: Runtime, jobs: list[Any]) -> None:
    for job in jobs:
        try:
            rt.queue.enqueue(job)
        except Exception:  # committed already; the reconciler enqueues it later
            log.warning("could not enqueue %s %s", job.kind, job.id, exc_info=True)
