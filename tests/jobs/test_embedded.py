"""The embedded default: no database or Redis configured -> SQLite file + in-process executor."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from jobs.runner import open_runtime
from jobs.screenings import store_local_result
from phasecore.screening.result import ScreeningResult
from service.app import create_app
from store.db import downgrade, upgrade
from store.models import Base, Screening
from store.settings import ServiceSettings
from tests.helpers.results import full_result
from tests.helpers.services import tiny_request, wait_for


def _embedded(tmp_path, model_root, **overrides) -> ServiceSettings:
    return ServiceSettings(
        home=tmp_path,
        model_root=model_root,
        database_url=None,
        redis_url=None,
        reconcile_grace=0,
        retry_backoff=(0,),
        **overrides,
    )


def test_migrations_build_the_models_schema_on_sqlite_and_postgres(tmp_path, pg_url):
    sqlite_url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(sqlite_url)
    downgrade(sqlite_url, "base")
    upgrade(sqlite_url)
    for url in (sqlite_url, pg_url):  # pg_url was built by the migrations in conftest
        engine = create_engine(url)
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        engine.dispose()


def test_serve_with_nothing_configured_runs_jobs_in_process(tmp_path, model_root):
    settings = _embedded(tmp_path, model_root)
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'phasescreen.db'}"
    runtime = open_runtime(settings)  # migrates the SQLite file itself
    try:
        with TestClient(create_app(runtime=runtime)) as client:
            submitted = client.post("/v1/screenings", json=tiny_request())
            assert submitted.status_code == 202
            location = submitted.headers["location"]
            done = wait_for(
                lambda: client.get(location).json()["state"] in ("succeeded", "failed"),
                timeout=240,
                interval=0.5,
                what="the in-process screening",
            )
            assert done
            body = client.get(location).json()
            assert body["state"] == "succeeded", body["problem"]
            assert body["result"]["engine_version"]
            assert client.get("/readyz").json()["checks"] == {"database": "ok", "queue": "ok"}
            assert "phasescreen_job_duration_seconds_count" in client.get("/metrics").text
    finally:
        runtime.close()
    assert (tmp_path / "phasescreen.db").exists()


def test_local_results_are_stored_in_the_embedded_file(tmp_path, model_root):
    request = tiny_request()
    result = ScreeningResult.model_validate(full_result(metrics={"cka": 0.5, "undefined": float("nan")}))
    screening_id = store_local_result(request, result, _embedded(tmp_path, model_root))

    runtime = open_runtime(_embedded(tmp_path, model_root))
    try:
        with runtime.session() as session:
            row = session.get(Screening, screening_id)
            assert row.state == "succeeded" and row.owner == "local"
            metrics = row.result.metrics.model_dump()
            assert (metrics["cka"], metrics["undefined"]) == (0.5, None)  # JSON has no NaN
        with TestClient(create_app(runtime=runtime)) as client:
            listed = client.get("/v1/screenings", params={"state": "succeeded"}).json()["items"]
            assert [item["id"] for item in listed] == [screening_id]
    finally:
        runtime.close()


def test_embedded_restart_hands_running_jobs_back_and_finishes_them(tmp_path, model_root):
    """Stopping `phasescreen serve` mid-job loses nothing: the next start picks the screening up again."""
    from sqlalchemy import select

    from store.models import StoredProfile

    first = open_runtime(_embedded(tmp_path, model_root))
    with TestClient(create_app(runtime=first)) as client:
        screening_id = client.post("/v1/screenings", json=tiny_request()).json()["id"]
        wait_for(lambda: client.get(f"/v1/screenings/{screening_id}").json()["state"] == "running", timeout=120)
    first.close()  # what `phasescreen serve` does on exit

    def handed_back() -> bool:
        with first.session() as session:
            states = set(session.scalars(select(StoredProfile.state)))
        return "running" not in states

    wait_for(handed_back, timeout=120, what="the interrupted job to hand its row back")
    with first.session() as session:
        assert all(p.attempts == 0 for p in session.scalars(select(StoredProfile)) if p.state == "queued")

    second = open_runtime(_embedded(tmp_path, model_root))
    try:
        with TestClient(create_app(runtime=second)) as client:  # its start-up reconciler enqueues again
            wait_for(
                lambda: client.get(f"/v1/screenings/{screening_id}").json()["state"] == "succeeded",
                timeout=240,
                interval=0.5,
                what="the screening after the restart",
            )
    finally:
        second.close()
