"""Poison requests: refused at submission when they cannot fit a worker, and a request that already wore out
its attempts is not given a fresh count by submitting it again."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from jobs.lifecycle import gave_up_problem
from store.models import StoredProfile
from tests.helpers.services import tiny_request


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"probes": "exact", "n": 576}, "Gram"),
        ({"probes": 64, "method": "sketch", "sketch_dim": 1 << 20, "n": 1500}, "sketch"),
        ({"memory_budget_gb": 1024}, "memory_budget_gb"),
    ],
)
def test_requests_too_large_for_a_worker_are_refused_with_422(client, options, words):
    response = client.post("/v1/screenings", json=tiny_request(**options))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith(":exceeds-worker-memory")
    assert words in problem["detail"] and "PHASESCREEN_WORKER_MEMORY_GB" in problem["detail"]


def test_the_worker_memory_setting_decides(make_runtime):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(runtime=make_runtime(worker_memory_gb=2))) as small:
        assert small.post("/v1/screenings", json=tiny_request(memory_budget_gb=3)).status_code == 422
        assert small.post("/v1/screenings", json=tiny_request(memory_budget_gb=1)).status_code == 202


def test_a_request_that_would_hold_a_worker_too_long_is_refused_with_422(make_runtime):
    """sketch_dim 2^20 with 64 probes at N = 20 fits a worker with memory to spare, but its sketch alone is
    about 20 minutes of the reference CPU: refused against PHASESCREEN_MAX_JOB_SECONDS, naming it."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    poison = tiny_request(probes=64, method="sketch", sketch_dim=1 << 20, n=20)
    roomy = make_runtime(worker_memory_gb=64, max_job_seconds=900)
    with TestClient(create_app(runtime=roomy)) as client:
        response = client.post("/v1/screenings", json=poison)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["type"].endswith(":exceeds-worker-budget")
        assert "PHASESCREEN_MAX_JOB_SECONDS" in problem["detail"] and "900 s" in problem["detail"]
        assert "sketch bookkeeping" in problem["detail"]
        # the same settings at an ordinary sketch width are seconds of work
        assert client.post("/v1/screenings", json=tiny_request(probes=64, method="sketch", n=20)).status_code == 202
    with TestClient(create_app(runtime=make_runtime(worker_memory_gb=64, max_job_seconds=5000))) as generous:
        assert generous.post("/v1/screenings", json=poison).status_code == 202


def test_without_a_compute_budget_the_job_timeout_is_the_limit(make_runtime):
    """N = 4096 with 12 probes fits 64 GB but is estimated at over an hour: the job would time out."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(runtime=make_runtime(worker_memory_gb=64))) as client:
        response = client.post("/v1/screenings", json=tiny_request(n=4096, probes=12, stability_subset=128))
        assert response.status_code == 422, response.text
        assert response.json()["type"].endswith(":exceeds-worker-budget")
        assert "PHASESCREEN_JOB_TIMEOUT" in response.json()["detail"]


def test_the_paper_size_demo_is_within_the_default_budgets(make_runtime):
    """The demo's settings (N = 576, 4 probes, sketch k = 8192, the default stability probe) are accepted by a
    worker with the default compute budget and the memory of this machine's smallest useful worker (8 GB)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    demo = {"vision": "timm:test_efficientnet?weights=random", "language": "file:tiny-bert?weights=random"}
    with TestClient(create_app(runtime=make_runtime(worker_memory_gb=8))) as client:
        response = client.post("/v1/screenings", json={**demo, "dataset": "digits", "options": {"n": 576}})
        assert response.status_code == 202, response.text


def test_five_thousand_digits_of_params_are_refused(client):
    response = client.post("/v1/screenings", json=tiny_request(params="last:" + "9" * 5000))
    assert response.status_code == 422


def test_resubmitting_a_poisoned_request_does_not_reset_its_attempts(client, runtime):
    first = client.post("/v1/screenings", json=tiny_request()).json()
    profile_id = first["profiles"]["vision"]["id"]
    worn_out = gave_up_problem("profile computation", 3, "the worker ... stopped sending heartbeats")
    with runtime.session() as session:  # three workers died on it (killed by the OOM killer, say)
        session.execute(
            update(StoredProfile)
            .where(StoredProfile.id == profile_id)
            .values(state="failed", attempts=3, problem=worn_out, lease_token=None)
        )
        session.commit()

    again = client.post("/v1/screenings", json=tiny_request())
    assert again.status_code == 422, again.text
    assert again.json()["type"].endswith(":poisoned-request")
    assert "3 times" in again.json()["detail"]
    with runtime.session() as session:
        row = session.get(StoredProfile, profile_id)
        assert (row.state, row.attempts) == ("failed", 3)  # not queued again with a fresh count
    # other settings are another profile, and another chance
    assert client.post("/v1/screenings", json=tiny_request(seed=7)).status_code == 202


def test_a_request_that_failed_on_its_input_is_still_queued_again(client, runtime):
    """Failures that cost no worker (a missing asset, since fixed) do not poison the request."""
    from problems import problem_document

    profile_id = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]["vision"]["id"]
    missing = problem_document(422, "asset-unavailable", "Weights or data unavailable", "no weights")
    with runtime.session() as session:
        session.execute(
            update(StoredProfile)
            .where(StoredProfile.id == profile_id)
            .values(state="failed", attempts=1, problem=missing, lease_token=None)
        )
        session.commit()
    assert client.post("/v1/screenings", json=tiny_request()).status_code == 202
    with runtime.session() as session:
        assert session.get(StoredProfile, profile_id).state == "queued"
