"""Faults between the queue and the database: a worker killed between RQ's dequeue and the claim, a job
that hangs, two profiles finishing together."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq.job import JobStatus
from sqlalchemy import select, update

from jobs import lifecycle
from jobs.reconcile import reconcile
from store.models import StoredProfile, utcnow
from tests.helpers.services import tiny_request

# real commits: job and heartbeat threads, concurrent completions, reconciler cut-offs on the database clock,
# the database cut through a proxy
pytestmark = pytest.mark.commits


def _age_queued_profiles(runtime, seconds: float) -> None:
    with runtime.session() as session:
        session.execute(
            update(StoredProfile)
            .where(StoredProfile.state == "queued")
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
        row = session.scalars(select(StoredProfile).where(StoredProfile.id == profile_id)).one()
        assert (row.state, row.worker, row.attempts) == ("running", "a:1", 1)


def test_a_hung_job_loses_its_lease_and_the_watchdog_ends_it(client, make_runtime):
    """A job blocked in a call that never returns (here an Event.wait): the heartbeat stops renewing its lease
    once no progress came for the stall timeout, the reconciler requeues it, and the watchdog ends the process."""
    import threading
    import time

    from jobs.tracker import JobTracker
    from tests.helpers.services import wait_for

    runtime = make_runtime(lease_timeout=1.0, stall_timeout=1.0)
    exits: list[int] = []
    release = threading.Event()

    def fake_exit(code: int) -> None:  # os._exit in a worker: the supervisor or RQ starts a fresh one
        exits.append(code)
        release.set()

    runtime.exit_process = fake_exit
    profile_id = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]["vision"]["id"]
    with runtime.session() as session:
        claim = lifecycle.claim_profile(session, profile_id, worker="hung:1", max_attempts=3)
        session.commit()

    def hung_job() -> None:
        with JobTracker(runtime, claim.lease, kind="profile") as tracker:
            tracker("loading", 0.0)
            release.wait(timeout=30)  # the native call that never returns

    job = threading.Thread(target=hung_job, daemon=True)
    job.start()
    try:
        report = wait_for(
            lambda: (r := reconcile(runtime)) and profile_id in r.requeued and r,
            timeout=15,
            interval=0.5,
            what="the hung job's lease to run out",
        )
        assert profile_id in report.requeued
        with runtime.session() as session:
            assert session.get(StoredProfile, profile_id).state == "queued"
        wait_for(lambda: exits, timeout=10, what="the watchdog")
        assert exits and exits[0] != 0
    finally:
        release.set()
        job.join(timeout=15)
    time.sleep(0.1)
    assert len(exits) == 1  # once


def test_a_job_that_reports_progress_keeps_its_lease(client, make_runtime):
    import time

    from jobs.tracker import JobTracker

    runtime = make_runtime(lease_timeout=1.0, stall_timeout=1.0)
    exits: list[int] = []
    runtime.exit_process = exits.append
    profile_id = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]["vision"]["id"]
    with runtime.session() as session:
        claim = lifecycle.claim_profile(session, profile_id, worker="busy:1", max_attempts=3)
        session.commit()
    with JobTracker(runtime, claim.lease, kind="profile") as tracker:
        for step in range(12):
            tracker("computing", step / 12)
            time.sleep(0.25)
            assert profile_id not in reconcile(runtime).requeued
    assert exits == []


def test_two_profiles_finishing_together_both_see_the_pair_ready(client, runtime):
    """Each completion commits in its own transaction; whichever commits second must find the pair ready,
    so the pair step never waits for the next reconciler pass."""
    import threading

    screening = client.post("/v1/screenings", json=tiny_request()).json()
    leases = []
    for modality in ("vision", "language"):
        with runtime.session() as session:
            claim = lifecycle.claim_profile(
                session, screening["profiles"][modality]["id"], worker="w:1", max_attempts=3
            )
            session.commit()
        leases.append(claim.lease)

    ready: dict[str, list] = {}
    first = runtime.sessions()
    second = runtime.sessions()
    try:
        ready["vision"] = lifecycle.complete_profile(first, leases[0], {})  # not committed yet

        def finish_language() -> None:
            ready["language"] = lifecycle.complete_profile(second, leases[1], {})
            second.commit()

        other = threading.Thread(target=finish_language)
        other.start()
        other.join(timeout=1.0)  # it may wait for the first to commit
        first.commit()
        other.join(timeout=10)
        assert not other.is_alive()
    finally:
        first.close()
        second.close()
    jobs = ready["vision"] + ready["language"]
    assert [job.id for job in jobs] == [screening["id"]], ready


def _cut_once_at(monkeypatch, proxy, name: str, seconds: float) -> list[int]:
    """Patch ``lifecycle.<name>`` so that its first call cuts the database (the proxy closes its port and every
    open connection) and brings it back ``seconds`` later; returns the calls made, for the test to count."""
    import threading

    real = getattr(lifecycle, name)
    calls: list[int] = []

    def cut_then_write(session, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            proxy.stop()
            threading.Timer(seconds, proxy.start).start()
        return real(session, *args, **kwargs)

    monkeypatch.setattr(lifecycle, name, cut_then_write)
    return calls


def test_a_finished_profile_and_result_land_across_a_database_cut(client, make_runtime, pg_url, monkeypatch):
    """The database goes away for 3 s exactly when a finished job writes its outcome: the write is tried again
    until it is back, and the work is kept (first attempt, nothing recomputed)."""
    from sqlalchemy import make_url

    from jobs.functions import run_pair_job, run_profile_job
    from store.models import Screening
    from tests.helpers.proxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", make_url(pg_url).port or 5432).start()
    try:
        url = make_url(pg_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        through_proxy = make_runtime(database_url=url)
        screening = client.post("/v1/screenings", json=tiny_request()).json()
        vision, language = (screening["profiles"][m]["id"] for m in ("vision", "language"))

        with monkeypatch.context() as patch:
            calls = _cut_once_at(patch, proxy, "complete_profile", 3.0)
            assert run_profile_job(vision, runtime=through_proxy) == "succeeded"
        assert len(calls) >= 2  # the first write met the cut; a later one landed
        assert run_profile_job(language, runtime=through_proxy) == "succeeded"
        with through_proxy.session() as session:
            for profile_id in (vision, language):
                row = session.get(StoredProfile, profile_id)
                assert (row.state, row.attempts, row.lease_token) == ("succeeded", 1, None)
                assert row.data

        with monkeypatch.context() as patch:
            calls = _cut_once_at(patch, proxy, "complete_pair", 3.0)
            assert run_pair_job(screening["id"], runtime=through_proxy) == "succeeded"
        assert len(calls) >= 2
        with through_proxy.session() as session:
            row = session.get(Screening, screening["id"])
            assert (row.state, row.attempts) == ("succeeded", 1)
            assert row.result.engine_version
    finally:
        proxy.stop()
