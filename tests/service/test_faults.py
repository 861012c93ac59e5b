"""Faults between the queue and the database: a worker killed between RQ's dequeue and the claim, a job
that hangs, two profiles finishing together."""

from __future__ import annotations

from datetime import timedelta

from rq.job import JobStatus
from sqlalchemy import select, update

from jobs import lifecycle
from jobs.reconcile import reconcile
from store.models import ModelProfile, utcnow
from tests.service.conftest import tiny_request


def _age_queued_profiles(runtime, seconds: float) -> None:
    with runtime.session() as session:
        session.execute(
            update(ModelProfile)
            .where(ModelProfile.state == "queued")
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )
        session.commit()


def test_dequeued_but_never_claimed_is_requeued_after_the_lease_timeout(client, runtime):
    """A worker SIGKILLed after RQ marked the job started but before it claimed the row."""
    screening = client.post("/v1/screenings", json=tiny_request()).json()
    profile_id = screening["profiles"]["vision"]["id"]
    queue = runtime.queue.queue
    job = queue.fetch_job(profile_id)
    queue.remove(job)  # what the dead worker's dequeue did ...
    job.set_status(JobStatus.STARTED)  # ... and what RQ still says about it
    assert runtime.queue.is_pending(profile_id) and profile_id not in queue.job_ids

    _age_queued_profiles(runtime, runtime.settings.lease_timeout / 2)
    assert profile_id not in reconcile(runtime).requeued  # younger than the lease timeout: left alone

    _age_queued_profiles(runtime, runtime.settings.lease_timeout + 1)
    report = reconcile(runtime)
    assert profile_id in report.requeued
    assert profile_id in queue.job_ids
    assert queue.fetch_job(profile_id).get_status() == JobStatus.QUEUED
    assert not reconcile(runtime).requeued  # waiting in the queue again: nothing more to do

    # a duplicate run is harmless: the claims are conditional and exactly one wins
    with runtime.session() as first, runtime.session() as second:
        won = lifecycle.claim_profile(first, profile_id, worker="a:1", max_attempts=3)
        first.commit()
        lost = lifecycle.claim_profile(second, profile_id, worker="b:2", max_attempts=3)
        second.commit()
    assert won is not None and lost is None
    with runtime.session() as session:
        row = session.scalars(select(ModelProfile).where(ModelProfile.id == profile_id)).one()
        assert (row.state, row.worker, row.attempts) == ("running", "a:1", 1)
