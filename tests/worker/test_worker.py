"""Submit -> RQ worker -> result in PostgreSQL, with real (tiny) engine runs."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import select

from store.models import Screening, StoredProfile
from tests.helpers.results import RESULT_KEYS
from tests.helpers.services import tiny_request, work_burst

# real commits: work_burst runs the worker with a runtime of its own
pytestmark = pytest.mark.commits



def test_submit_work_result_stored_and_served(client, runtime):
    submitted = client.post("/v1/screenings", json=tiny_request())
    assert submitted.status_code == 202
    screening_id = submitted.json()["id"]

    assert work_burst(runtime.settings)  # profiles, then the pair step they enqueue, in one burst

    body = client.get(f"/v1/screenings/{screening_id}").json()
    assert body["state"] == "succeeded", body["problem"]
    assert body["progress"] == 1.0 and body["finished_at"] and body["problem"] is None
    assert set(body["result"]) >= RESULT_KEYS
    for rule in body["result"]["predictions"].values():  # measured beside claimed: too few stored pairs yet
        assert rule["measured"]["status"] == "insufficient" and rule["measured"]["reason"]
    with runtime.session() as session:  # stored in PostgreSQL, not only served
        row = session.get(Screening, screening_id)
        assert row.result is not None and row.result.model_dump(mode="json") == body["result"] and row.attempts == 1
        profiles = session.scalars(select(StoredProfile)).all()
        assert {p.state for p in profiles} == {"succeeded"} and all(p.data for p in profiles)
    vision = client.get(body["profiles"]["vision"]["href"]).json()
    assert vision["state"] == "succeeded" and vision["arrays"] and vision["identity"]
    assert vision["size_bytes"] > 0

    # an identical request is served from the stored result ...
    again = client.post("/v1/screenings", json=tiny_request())
    assert again.status_code == 201 and again.json()["reused_from"] == screening_id
    assert again.json()["result"] == body["result"]
    # ... unless asked not to; then only the pair step runs, on the stored profiles
    fresh = client.post("/v1/screenings", json={**tiny_request(), "reuse": False})
    assert fresh.status_code == 202
    assert {p["id"] for p in fresh.json()["profiles"].values()} == {p["id"] for p in body["profiles"].values()}
    assert runtime.queue.queue.job_ids == [fresh.json()["id"]]
    work_burst(runtime.settings)
    assert client.get(f"/v1/screenings/{fresh.json()['id']}").json()["state"] == "succeeded"

    metrics = client.get("/metrics").text
    assert 'phasescreen_screenings{state="succeeded"} 3.0' in metrics
    # stage durations of all workers, summed in the database: two profiles, two pair steps
    assert 'phasescreen_stage_duration_seconds_count{kind="profile",stage="kernel"} 2.0' in metrics
    assert 'phasescreen_stage_duration_seconds_count{kind="pair",stage="pair"} 2.0' in metrics


def test_a_model_that_cannot_load_fails_with_a_problem_and_is_not_retried(client, runtime, model_root):
    broken = model_root / "broken-vit"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"architecture": "no_such_architecture_anywhere"}')
    (broken / "model.safetensors").write_bytes(b"not weights")
    submitted = client.post("/v1/screenings", json={**tiny_request(), "vision": "file:broken-vit"})
    assert submitted.status_code == 202, submitted.text

    work_burst(runtime.settings)
    screening = client.get(f"/v1/screenings/{submitted.json()['id']}").json()
    assert screening["state"] == "failed"
    problem = screening["problem"]
    assert problem["type"].rsplit(":", 1)[-1] in (
        "invalid-reference",
        "unsupported-model",
        "asset-unavailable",
    )
    assert "no_such_architecture_anywhere" in problem["detail"]  # says what is wrong
    vision = client.get(screening["profiles"]["vision"]["href"]).json()
    assert vision["state"] == "failed" and vision["attempts"] == 1  # a domain error is final
    kind = problem["type"].rsplit(":", 1)[-1]
    assert f'phasescreen_failed_screenings{{problem="{kind}"}} 1.0' in client.get("/metrics").text


@pytest.mark.slow
def test_offline_pretrained_pair(client, runtime):
    """The pretrained offline packages of the README's demo, end to end through the worker."""
    body = {**tiny_request(), "vision": "pkg:efficientnet-lite0", "language": "pkg:all-minilm-l6-v2"}
    screening_id = client.post("/v1/screenings", json=body).json()["id"]
    work_burst(runtime.settings)
    screening = client.get(f"/v1/screenings/{screening_id}").json()
    assert screening["state"] == "succeeded", screening["problem"]
    assert screening["result"]["vision"]["identity"]["n_params"] > 1_000_000


def test_a_gpu_worker_that_sees_no_gpu_exits_at_start():
    """PHASESCREEN_DEVICE=cuda on a machine (or container) without a visible GPU: the worker stops before it
    takes a job, with the reason, instead of running every job on the CPU."""
    import torch

    from store.settings import ServiceSettings
    from worker.main import run_worker

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    settings = ServiceSettings(redis_url="redis://127.0.0.1:6379/13", device="cuda")
    with pytest.raises(SystemExit, match="PHASESCREEN_DEVICE=cuda: .*sees no CUDA GPU"):
        run_worker(settings, burst=True)


@pytest.mark.parametrize("error", [MemoryError, torch.cuda.OutOfMemoryError])
def test_out_of_memory_while_loading_is_retried_while_computing_is_not(client, runtime, monkeypatch, error):
    """Memory runs out while a model loads: other jobs held it, so the load is tried again (not an unsupported
    model). It runs out while the job computes: the same job would run out again, so it fails and says why."""
    import phasecore.screening.pipeline
    import phasecore.sources
    from jobs import functions as jobs

    body = client.post("/v1/screenings", json=tiny_request()).json()
    vision_id = body["profiles"]["vision"]["id"]
    real_load = phasecore.sources.SOURCE_LOADERS["timm"]
    loads = []

    def load_once_out_of_memory(*args, **kwargs):
        loads.append(1)
        if len(loads) == 1:
            raise error("out of memory while loading the weights")
        return real_load(*args, **kwargs)

    monkeypatch.setitem(phasecore.sources.SOURCE_LOADERS, "timm", load_once_out_of_memory)
    with pytest.raises(error):  # raised so the queue retries it
        jobs.run_profile_job(vision_id, runtime=runtime)
    with runtime.session() as session:
        row = session.get(StoredProfile, vision_id)
        assert (row.state, row.attempts) == ("queued", 1), row.problem
        assert row.problem.kind == "retrying" and error.__name__ in row.problem.detail

    def compute_out_of_memory(*args, **kwargs):
        raise error("out of memory in the Gram matrix")

    monkeypatch.setattr(phasecore.screening.pipeline, "compute_profile", compute_out_of_memory)
    assert jobs.run_profile_job(vision_id, runtime=runtime) == "failed"  # not raised: no retry
    assert len(loads) == 2
    screening = client.get(f"/v1/screenings/{body['id']}").json()
    assert screening["state"] == "failed"
    assert screening["problem"]["type"].endswith(":out-of-memory"), screening["problem"]
    assert "memory_budget_gb" in screening["problem"]["detail"]


def test_a_killed_workers_scheduler_dies_with_it_and_frees_its_database_session(make_settings, tmp_path):
    """RQ forks its scheduler from the worker, and the fork inherits the worker's database sockets. A worker
    SIGKILLed in a transaction used to leave the scheduler running with those sockets open, so PostgreSQL never
    ended the dead worker's transaction and its row locks blocked every other worker (bench/chaos.py hung)."""
    import contextlib
    import os
    import signal

    from sqlalchemy import create_engine, text

    from tests.helpers.services import child_pids, exited, start_worker_process, wait_for

    settings = make_settings()
    worker = None

    engine = create_engine(settings.sqlalchemy_url)
    scheduler = None

    def backends() -> set[int]:
        with engine.connect() as connection:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            return {int(pid) for pid in connection.execute(text(query)).scalars()}

    try:
        before = backends()
        worker = start_worker_process(settings, log=tmp_path / "worker.log")
        scheduler = wait_for(lambda: child_pids(worker.pid), timeout=60, what="the worker's scheduler process")[0]
        theirs = wait_for(lambda: backends() - before, timeout=30, what="the worker's database session")
        worker.send_signal(signal.SIGKILL)
        worker.wait()

        wait_for(lambda: exited(scheduler), timeout=10, what="the orphaned scheduler to exit")
        wait_for(lambda: not theirs & backends(), timeout=10, what="PostgreSQL to end the dead worker's sessions")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        if scheduler is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(scheduler, signal.SIGKILL)
        engine.dispose()
