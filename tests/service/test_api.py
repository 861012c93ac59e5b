"""The HTTP contract without a worker: submission, idempotency, validation, listing, cancel, health."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
from sqlalchemy import func, select

from store.models import Screening, StoredProfile
from tests.helpers.services import DATASET, LANGUAGE, VISION, assert_problem, tiny_request


def test_submit_answers_202_with_location_and_enqueues_profile_jobs_by_id(client, runtime):
    response = client.post("/v1/screenings", json=tiny_request())
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/screenings/{body['id']}"
    assert int(response.headers["retry-after"]) > 0
    assert body["state"] == "queued" and body["result"] is None
    assert body["request"]["vision"] == VISION and body["request"]["options"]["n"] == 20
    # the queue holds the two profile jobs, under the profiles' ids, with ids as their only argument
    profile_ids = {p["id"] for p in body["profiles"].values()}
    assert set(runtime.queue.queue.job_ids) == profile_ids
    job = runtime.queue.queue.fetch_job(next(iter(profile_ids)))
    assert job.args == [job.id] and job.func_name == "jobs.runner.run_profile_job"

    fetched = client.get(response.headers["location"])
    assert fetched.status_code == 200 and fetched.json()["id"] == body["id"]


def test_idempotency_key_same_body_same_screening_other_body_422(client, runtime):
    headers = {"Idempotency-Key": "batch-42"}
    first = client.post("/v1/screenings", json=tiny_request(), headers=headers)
    again = client.post("/v1/screenings", json=tiny_request(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/screenings", json=tiny_request(seed=1), headers=headers)
    doc = assert_problem(other, 422, "idempotency-key-reused")
    assert doc["screening_id"] == first.json()["id"]
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(Screening)) == 1


@pytest.mark.commits  # eight request threads at once
def test_concurrent_submissions_share_one_profile_row_and_job(client, runtime):
    """Eight screenings of the same pair arrive at once: eight screenings, two profiles, two jobs."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/screenings", json=tiny_request()), range(8)))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 8
    profile_ids = {p["id"] for r in responses for p in r.json()["profiles"].values()}
    assert len(profile_ids) == 2
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(StoredProfile)) == 2
    assert sorted(runtime.queue.queue.job_ids) == sorted(profile_ids)


def test_a_bad_zoo_recipe_is_a_problem_naming_the_field(client):
    post = lambda vision: client.post("/v1/screenings", json={**tiny_request(), "vision": vision})  # noqa: E731
    doc = assert_problem(post("zoo:shapes?tower=vision&steps=0"), 422, "invalid-reference")
    assert "steps" in doc["detail"]
    doc = assert_problem(post("zoo:shapes?tower=vision&mode=random&caption_noise=0.3"), 422, "invalid-reference")
    assert "caption_noise" in doc["detail"]
    doc = assert_problem(post("zoo:shapes?tower=text"), 422, "invalid-reference")  # a text tower as vision
    assert "tower=vision" in doc["detail"]
    # the training counts against a worker's compute budget
    doc = assert_problem(post("zoo:shapes?tower=vision&steps=20000&width=128"), 422, "exceeds-worker-budget")
    assert "training of zoo:shapes" in doc["detail"]


def test_bad_input_is_a_problem_never_a_500(client):
    post = lambda **kw: client.post("/v1/screenings", **kw)  # noqa: E731
    json_headers = {"content-type": "application/json"}
    assert_problem(post(content=b'{"vision": ', headers=json_headers), 400, "malformed-json")
    assert_problem(post(content=b'{"vision": 1' + b"1" * 5000 + b"}", headers=json_headers), 400)
    assert_problem(post(json={**tiny_request(), "dataset": "dig\x00its"}), 422, "validation-error")
    assert_problem(post(json={**tiny_request(), "vision": 12}), 422, "validation-error")
    assert_problem(post(json=[1, 2]), 422, "validation-error")
    assert_problem(post(json=tiny_request(n=10**40)), 422, "validation-error")
    assert_problem(post(json=tiny_request(n=2)), 422, "validation-error")
    assert_problem(post(json={**tiny_request(), "extra": 1}), 422, "validation-error")
    assert_problem(post(json={**tiny_request(), "vision": "nosuchsource:x"}), 422, "invalid-reference")
    assert_problem(post(json={**tiny_request(), "dataset": "no-such-dataset"}), 422)
    assert_problem(post(json={**tiny_request(), "vision": "pkg:no-such-package-model"}), 422)
    assert_problem(post(json=tiny_request(n=4000)), 422)  # more than the digits data set holds per class
    assert_problem(post(content=b"x" * 100_000, headers=json_headers), 413, "body-too-large")
    assert_problem(post(json=tiny_request(), headers={"Idempotency-Key": "é".encode("latin-1") * 3}), 400)
    assert_problem(client.get("/v1/screenings/not-an-id"), 404, "not-found")
    assert_problem(client.get("/v1/screenings", params={"model": "a\x00b"}), 422)
    assert_problem(client.get("/v1/screenings", params={"limit": 10**30}), 422)
    assert_problem(client.get("/v1/screenings", params={"cursor": "garbage"}), 400, "invalid-cursor")
    assert_problem(client.get("/v1/profiles/00000000-0000-0000-0000-000000000000"), 404)
    assert_problem(client.delete("/v1/screenings"), 405)


def test_source_outside_the_allow_list_is_refused(make_runtime):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(runtime=make_runtime(allowed_sources=("timm", "file")))) as client:
        ok = client.post("/v1/screenings", json=tiny_request())
        assert ok.status_code == 202
        refused = client.post("/v1/screenings", json={**tiny_request(), "language": "hf:bert-base-uncased"})
        assert_problem(refused, 403, "source-not-allowed")
        assert client.get("/v1/sources").json()["allowed_sources"] == ["timm", "file"]


def test_list_filters_and_cursor_pagination(client):
    ids = [client.post("/v1/screenings", json=tiny_request(seed=seed)).json()["id"] for seed in range(5)]
    client.post(f"/v1/screenings/{ids[0]}/cancel")

    pages, cursor = [], None
    while True:
        response = client.get("/v1/screenings", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200
        pages.append([item["id"] for item in response.json()["items"]])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert [i for page in pages for i in page] == ids[::-1]  # newest first, each exactly once
    assert [len(p) for p in pages] == [2, 2, 1]

    by_state = client.get("/v1/screenings", params={"state": "cancelled"}).json()["items"]
    assert [item["id"] for item in by_state] == [ids[0]]
    assert len(client.get("/v1/screenings", params={"model": VISION}).json()["items"]) == 5
    assert len(client.get("/v1/screenings", params={"model": LANGUAGE}).json()["items"]) == 5
    assert client.get("/v1/screenings", params={"model": "timm:resnet18"}).json()["items"] == []
    assert len(client.get("/v1/screenings", params={"dataset": DATASET}).json()["items"]) == 5
    assert_problem(client.get("/v1/screenings", params={"state": "sleeping"}), 422)


def test_cancel_queued_then_finished_is_409(client, runtime):
    screening = client.post("/v1/screenings", json=tiny_request()).json()
    cancelled = client.post(f"/v1/screenings/{screening['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.post(f"/v1/screenings/{screening['id']}/cancel").status_code == 200  # idempotent
    with runtime.session() as session:
        row = session.get(Screening, screening["id"])
        row.state = "succeeded"
        session.commit()
    assert_problem(client.post(f"/v1/screenings/{screening['id']}/cancel"), 409, "not-cancellable")
    assert_problem(client.post("/v1/screenings/00000000-0000-0000-0000-000000000000/cancel"), 404)


def test_health_ready_sources_metrics(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "queue": "ok"}
    sources = client.get("/v1/sources").json()
    assert {"timm", "hf", "file", "pkg"} <= set(sources["allowed_sources"])
    assert any(d.get("name") == "digits" for d in sources["datasets"])
    assert sources["limits"]["max_n"] >= 8
    client.post("/v1/screenings", json=tiny_request())
    text = client.get("/metrics").text
    assert 'phasescreen_http_requests_total{method="POST",route="/v1/screenings",status="202"} 1.0' in text
    assert "phasescreen_http_request_duration_seconds_bucket" in text
    assert "phasescreen_queue_depth 2.0" in text
    assert 'phasescreen_screenings{state="queued"} 1.0' in text


def test_openapi_schema_lists_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/screenings",
        "/v1/screenings/{screening_id}",
        "/v1/screenings/{screening_id}/cancel",
        "/v1/profiles/{profile_id}",
        "/v1/sources",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert json.dumps(paths["/v1/screenings"]["post"]["requestBody"])


def test_a_manifest_that_is_a_folder_or_not_utf8_answers_422(make_runtime, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app

    data_root = tmp_path / "data"
    (data_root / "folder").mkdir(parents=True)
    (data_root / "latin1.jsonl").write_bytes('{"image": "a.png", "caption": "caf\u00e9"}\n'.encode("latin-1"))
    with TestClient(create_app(runtime=make_runtime(data_root=data_root)), raise_server_exceptions=False) as client:
        for dataset in ("manifest:.", "manifest:folder", "manifest:latin1.jsonl"):
            response = client.post("/v1/screenings", json={**tiny_request(), "dataset": dataset})
            doc = assert_problem(response, 422, "invalid-reference")
            assert "folder" in doc["detail"] or "UTF-8" in doc["detail"], doc


def test_models_outside_the_name_patterns_are_refused(make_runtime):
    from fastapi.testclient import TestClient

    from service.app import create_app

    vision = tiny_request()["vision"].partition(":")[2].partition("?")[0].partition(".")[0]
    patterns = (f"timm:{vision}", "hf:sentence-transformers/*")
    with TestClient(create_app(runtime=make_runtime(allowed_models=patterns))) as client:
        ok = client.post("/v1/screenings", json=tiny_request())
        assert ok.status_code == 202, ok.text
        refused = client.post("/v1/screenings", json={**tiny_request(), "language": "hf:bert-base-uncased"})
        assert_problem(refused, 403, "source-not-allowed")
        refused = client.post("/v1/screenings", json={**tiny_request(), "vision": "timm:resnet18?weights=random"})
        assert_problem(refused, 403, "source-not-allowed")
        assert client.get("/v1/sources").json()["allowed_models"] == list(patterns)


def test_a_new_pair_reads_its_profiles_once_and_answers_as_a_read_would(client, runtime):
    """A submission whose two profiles are new: one lookup and one insert of model_profiles, no read-back
    after the commit (they were queued when it committed); the answer's profiles are what a GET shows. A
    submission that shares them reads them back."""
    from sqlalchemy import event

    with runtime.session() as session:
        engine = session.get_bind().engine
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        if "model_profiles" in statement:
            statements.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        first = client.post("/v1/screenings", json=tiny_request(seed=11))
        assert statements == ["SELECT", "INSERT"], statements
        statements.clear()
        second = client.post("/v1/screenings", json=tiny_request(seed=11))  # the same profiles, now existing
        assert statements.count("SELECT") == 2, statements  # the lookup, and the read-back after the commit
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert first.status_code == second.status_code == 202
    for response in (first, second):
        fetched = client.get(response.headers["location"]).json()
        assert response.json()["profiles"] == fetched["profiles"] and response.json() == fetched
    assert first.json()["profiles"] == second.json()["profiles"]
    assert set(runtime.queue.queue.job_ids) == {p["id"] for p in first.json()["profiles"].values()}
