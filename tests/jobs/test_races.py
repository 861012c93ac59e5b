"""Races between the API, the workers and the reconciler: terminal states never change, whoever writes last."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from jobs import lifecycle
from phasecore.screening.result import ScreeningResult
from problems import problem_document
from service import screenings
from store.models import Screening, StoredProfile
from tests.helpers.results import full_result
from tests.helpers.services import tiny_request

DONE = ScreeningResult.model_validate(full_result(metrics={"cka": 0.25}))

# real commits: races between transactions and the database clock moving
pytestmark = pytest.mark.commits


def _claimed_pair(client, runtime) -> tuple[str, lifecycle.Lease]:
    """A screening whose profiles are computed and whose pair step a worker holds."""
    body = client.post("/v1/screenings", json=tiny_request()).json()
    with runtime.session() as session:
        session.execute(
            update(StoredProfile)
            .where(StoredProfile.id.in_([p["id"] for p in body["profiles"].values()]))
            .values(state="succeeded")
        )
        claim = lifecycle.claim_pair(session, body["id"], worker="test:1", max_attempts=3)
        session.commit()
    assert claim is not None
    return body["id"], claim.lease


def test_a_screening_completed_between_the_read_and_the_cancel_stays_succeeded(client, runtime, monkeypatch):
    screening_id, lease = _claimed_pair(client, runtime)
    read = screenings.get_screening

    def read_then_the_worker_finishes(session, ident, *tenant):
        row = read(session, ident, *tenant)  # the canceller sees it running ...
        with runtime.session() as worker_session:  # ... and the worker stores its result right then
            assert lifecycle.complete_pair(worker_session, lease, DONE)
            worker_session.commit()
        return row

    monkeypatch.setattr(screenings, "get_screening", read_then_the_worker_finishes)
    response = client.post(f"/v1/screenings/{screening_id}/cancel")
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith(":not-cancellable")
    with runtime.session() as session:
        row = session.get(Screening, screening_id)
        assert (row.state, row.result, row.cancel_requested) == ("succeeded", DONE, False)


def test_a_cancelled_screening_cannot_be_completed_afterwards(client, runtime):
    screening_id, lease = _claimed_pair(client, runtime)
    cancelled = client.post(f"/v1/screenings/{screening_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    with runtime.session() as session:
        assert not lifecycle.complete_pair(session, lease, DONE)
        late = problem_document(500, "retrying", "Retrying after a fault", "late")
        assert not lifecycle.release_for_retry(session, lease, late)
        lifecycle.fail_screening(session, screening_id, late, lease)
        session.commit()
        row = session.get(Screening, screening_id)
        session.refresh(row)
        assert (row.state, row.result, row.problem) == ("cancelled", None, None)


def test_leases_are_judged_by_the_database_clock_not_a_skewed_worker_clock(client, runtime, monkeypatch):
    """A worker whose clock runs an hour late writes heartbeats an hour old by its own clock, and a reconciler
    whose clock runs an hour early sees every heartbeat as an hour old: neither may steal a live job."""
    import store.models
    from jobs.reconcile import reconcile

    real = store.models.datetime

    def skewed(hours: float) -> type:
        class Skewed(real):  # type: ignore[misc, valid-type]
            @classmethod
            def now(cls, tz=None):  # noqa: ANN001, ANN206
                return real.now(tz) + timedelta(hours=hours)

        return Skewed

    profile_id = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]["vision"]["id"]
    monkeypatch.setattr(store.models, "datetime", skewed(-1))  # the worker's clock
    with runtime.session() as session:
        claim = lifecycle.claim_profile(session, profile_id, worker="late:1", max_attempts=3)
        assert claim is not None
        assert lifecycle.renew_lease(session, claim.lease)
        session.commit()
    monkeypatch.setattr(store.models, "datetime", skewed(+1))  # the reconciler's clock
    report = reconcile(runtime)
    assert profile_id not in report.requeued + report.failed
    with runtime.session() as session:
        row = session.get(StoredProfile, profile_id)
        assert (row.state, row.lease_token) == ("running", claim.lease.token)
        db_now = session.scalar(select(func.now()))
        assert abs((row.heartbeat_at - db_now).total_seconds()) < 60
