"""The reconciler: makes the queue agree with the database again after a crash, a kill or a lost Redis.

PostgreSQL is the truth. One pass:

1. a ``running`` profile or pair step whose heartbeat is older than PHASESCREEN_LEASE_TIMEOUT lost its worker
   (SIGKILL, OOM, machine gone): it is queued again, or failed with a reason once its attempts are spent;
2. a ``queued`` profile, or a screening whose profiles are done but whose pair step has not started, that the
   queue does not hold (Redis flushed or restarted, an enqueue that failed after commit) is enqueued again;
   one still unclaimed after PHASESCREEN_LEASE_TIMEOUT is queued afresh unless it waits in the queue, whatever
   RQ says of it: a worker killed between RQ's dequeue and the claim leaves RQ saying ``started`` (claims are
   conditional, so a duplicate job is harmless);
3. a failed or cancelled profile that an active screening still waits for is failed through to it, or
   queued again.

It runs when a worker starts and every PHASESCREEN_RECONCILE_INTERVAL seconds in every worker (and in the
API process in embedded mode). Passes may overlap: every transition is conditional, jobs are idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from jobs import lifecycle, prometheus
from jobs.queue import JobKind, JobRef
from jobs.runtime import Runtime
from store.models import ACTIVE_STATES, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Screening, StoredProfile, db_now

log = logging.getLogger(__name__)
_BATCH = 500


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)  # lost workers' jobs, queued again
    enqueued: list[str] = field(default_factory=list)  # rows the queue had lost
    failed: list[str] = field(default_factory=list)  # gave up

    def __bool__(self) -> bool:
        return bool(self.requeued or self.enqueued or self.failed)


def reconcile(runtime: Runtime) -> ReconcileReport:
    settings = runtime.settings
    # cut-offs on the database's clock, the one every heartbeat was written with
    stale_before = db_now(-settings.lease_timeout)
    settled_before = db_now(-settings.reconcile_grace)
    report = ReconcileReport()
    forced: list[JobRef] = []
    maybe_lost: list[JobRef] = []
    overdue: list[JobRef] = []  # unclaimed for longer than a lease: requeued unless waiting in the queue

    with runtime.session() as session:
        # 1. lost workers
        tables: tuple[tuple[lifecycle.JobRow, JobKind], ...] = ((StoredProfile, "profile"), (Screening, "pair"))
        for table, kind in tables:
            stale = cast(
                Sequence[StoredProfile | Screening],
                session.scalars(
                    select(table)
                    .where(table.state == RUNNING, table.lease_token.is_not(None), table.heartbeat_at < stale_before)
                    .limit(_BATCH)
                ).all(),
            )
            for row in stale:
                lease = lifecycle.Lease(table, row.id, row.lease_token or "")
                what = "profile computation" if kind == "profile" else "pair step"
                lost = lifecycle.worker_lost_problem(what, row.worker, row.heartbeat_at)
                if row.attempts >= settings.max_attempts:
                    lifecycle.fail_job(session, lease, lifecycle.gave_up_problem(what, row.attempts, lost.detail))
                    report.failed.append(row.id)
                elif lifecycle.release_for_retry(session, lease, lost):
                    forced.append(JobRef(kind, row.id))
                    report.requeued.append(row.id)

        # 2a. queued profiles the queue may have lost
        queued_profiles = session.scalars(
            select(StoredProfile.id)
            .where(StoredProfile.state == QUEUED, StoredProfile.updated_at < settled_before)
            .limit(_BATCH)
        ).all()
        maybe_lost += [JobRef("profile", pid) for pid in queued_profiles]
        overdue += [
            JobRef("profile", pid)
            for pid in session.scalars(
                select(StoredProfile.id)
                .where(StoredProfile.state == QUEUED, StoredProfile.updated_at < stale_before)
                .limit(_BATCH)
            ).all()
        ]

        # 3. finished-badly profiles that active screenings still wait for
        awaited = session.scalars(
            select(StoredProfile)
            .where(
                StoredProfile.state.in_((FAILED, CANCELLED)),
                select(Screening.id)
                .where(
                    lifecycle.waiting_on_profile(StoredProfile.id),
                    Screening.state.in_(ACTIVE_STATES),
                    Screening.cancel_requested.is_(False),
                    Screening.lease_token.is_(None),
                )
                .exists(),
            )
            .limit(_BATCH)
        ).all()
        for profile in awaited:
            if profile.state == FAILED:
                lifecycle.fail_waiting_screenings(session, profile.id, profile.modality, profile.problem)
                report.failed.append(profile.id)
            elif lifecycle.reset_profile_if_finished_badly(session, profile):
                maybe_lost.append(JobRef("profile", profile.id))

        # 2b. screenings whose pair step is ready but not running
        vision, language = aliased(StoredProfile), aliased(StoredProfile)
        ready = session.execute(
            select(
                Screening.id,
                and_(
                    Screening.updated_at < stale_before,
                    vision.finished_at < stale_before,
                    language.finished_at < stale_before,
                ).label("overdue"),
            )
            .join(vision, and_(vision.id == Screening.vision_profile_id, vision.state == SUCCEEDED))
            .join(language, and_(language.id == Screening.language_profile_id, language.state == SUCCEEDED))
            .where(
                Screening.state.in_(ACTIVE_STATES),
                Screening.cancel_requested.is_(False),
                Screening.lease_token.is_(None),
                Screening.updated_at < settled_before,
            )
            .limit(_BATCH)
        ).all()
        for sid, pair_overdue in ready:
            (overdue if pair_overdue else maybe_lost).append(JobRef("pair", sid))
        session.commit()

    # after commit, as always: a job must never find its row in the state before the change
    for job in forced:
        runtime.queue.requeue(job)
    for job in overdue:
        if not runtime.queue.is_waiting(job.id):
            runtime.queue.requeue(job)
            report.requeued.append(job.id)
    overdue_ids = {job.id for job in overdue}
    for job in maybe_lost:
        if job.id in overdue_ids:
            continue
        if not runtime.queue.is_pending(job.id):
            runtime.queue.enqueue(job)
            report.enqueued.append(job.id)
    prometheus.RECONCILED.labels("requeued").inc(len(report.requeued))
    prometheus.RECONCILED.labels("enqueued").inc(len(report.enqueued))
    prometheus.RECONCILED.labels("failed").inc(len(report.failed))
    if report:
        log.info(
            "reconciler: %d lost jobs queued again, %d missing jobs enqueued, %d failed",
            len(report.requeued),
            len(report.enqueued),
            len(report.failed),
        )
    return report


class PeriodicReconciler:
    """Runs :func:`reconcile` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, runtime: Runtime, interval: float) -> None:
        self._runtime = runtime
        self._interval = interval
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> PeriodicReconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._halt.wait(self._interval):
            try:
                reconcile(self._runtime)
            except Exception:  # a database or Redis outage: try again next interval
                log.warning("reconciler pass failed", exc_info=True)
