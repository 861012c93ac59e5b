"""Nothing is lost: killed workers, a flushed Redis, a database outage, cancelled running jobs."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import make_url, select, update

from jobs.reconcile import reconcile
from service.app import create_app
from store.models import Screening, StoredProfile, utcnow
from tests.helpers.proxy import TcpProxy
from tests.helpers.services import start_worker_process, tiny_request, wait_for, work_burst

# real commits: worker processes, work_burst, the proxy, an exhausted pool
pytestmark = pytest.mark.commits


def _state(runtime, table, row_id):
    with runtime.session() as session:
        return session.get(table, row_id)


def _running_profile(runtime):
    with runtime.session() as session:
        return session.scalars(select(StoredProfile).where(StoredProfile.state == "running")).first()


def _wait_until_computing(runtime, process, log):
    """The first profile the worker process runs; fails with its log if it dies or never gets there."""

    def running():
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}: {log.read_text()[-3000:]}")
        return _running_profile(runtime)

    try:
        return wait_for(running, timeout=240, interval=0.05, what="a running profile")
    except AssertionError:
        process.kill()
        raise AssertionError(f"no profile started; worker log: {log.read_text()[-3000:]}") from None


def test_worker_sigkilled_mid_job_is_retried_and_the_screening_succeeds(client, make_settings, runtime, tmp_path):
    settings = make_settings(lease_timeout=3.0)
    screening_id = client.post("/v1/screenings", json=tiny_request()).json()["id"]

    first = start_worker_process(settings, "--burst", log=tmp_path / "killed.log")
    victim = _wait_until_computing(runtime, first, tmp_path / "killed.log")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert _state(runtime, StoredProfile, victim.id).state == "running"  # what the dead worker left behind

    time.sleep(settings.lease_timeout + 0.5)  # its lease runs out
    second = start_worker_process(settings, "--burst", log=tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]

    screening = client.get(f"/v1/screenings/{screening_id}").json()
    assert screening["state"] == "succeeded", screening["problem"]
    assert _state(runtime, StoredProfile, victim.id).attempts == 2


def test_redis_flushed_while_queued_the_reconciler_enqueues_again(client, runtime, redis_url):
    screening_id = client.post("/v1/screenings", json=tiny_request()).json()["id"]
    assert runtime.queue.depth() == 2
    Redis.from_url(redis_url).flushdb()  # a Redis restart without persistence
    assert runtime.queue.depth() == 0

    assert work_burst(runtime.settings)  # the worker reconciles on start, then works what it enqueued
    assert client.get(f"/v1/screenings/{screening_id}").json()["state"] == "succeeded"


def test_reconciler_requeues_or_fails_rows_of_lost_workers(client, runtime, make_settings):
    """Rows whose heartbeat stopped: retried while attempts remain, else failed with the reason."""
    from jobs.runner import open_runtime

    first = client.post("/v1/screenings", json=tiny_request()).json()
    second = client.post("/v1/screenings", json=tiny_request(seed=1)).json()
    long_ago = utcnow() - timedelta(hours=1)
    with runtime.session() as session:
        for screening, attempts in ((first, 1), (second, 3)):
            session.execute(
                update(StoredProfile)
                .where(StoredProfile.id == screening["profiles"]["vision"]["id"])
                .values(
                    state="running",
                    lease_token="dead",
                    worker="gone:1",
                    heartbeat_at=long_ago,
                    attempts=attempts,
                )
            )
        session.commit()
    Redis.from_url(runtime.settings.redis_url).flushdb()

    report = reconcile(runtime)
    retried, lost = first["profiles"]["vision"]["id"], second["profiles"]["vision"]["id"]
    assert retried in report.requeued and lost in report.failed
    assert _state(runtime, StoredProfile, retried).state == "queued"
    assert runtime.queue.is_pending(retried)
    failed = client.get(f"/v1/screenings/{second['id']}").json()
    assert failed["state"] == "failed"
    assert failed["problem"]["type"].endswith("attempts-exhausted")
    assert "heartbeat" in failed["problem"]["detail"]
    assert "gone" not in failed["problem"]["detail"]  # the worker's host:pid stays in the logs
    # the queued language profiles the flush lost are back in the queue too
    assert runtime.queue.is_pending(first["profiles"]["language"]["id"])
    # a second pass finds nothing to do
    assert not reconcile(open_runtime(make_settings()))


def test_cancel_stops_a_running_job(client, make_settings, runtime, tmp_path):
    settings = make_settings(lease_timeout=2.0)
    # the engine reports progress between stages, so the job stops at the end of the stage it is in
    screening_id = client.post("/v1/screenings", json=tiny_request()).json()["id"]
    worker = start_worker_process(settings, "--burst", log=tmp_path / "worker.log")
    try:
        victim = _wait_until_computing(runtime, worker, tmp_path / "worker.log")
        cancelled = client.post(f"/v1/screenings/{screening_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        # the job notices at its next heartbeat and stops; the burst worker then finds nothing else to do
        assert worker.wait(timeout=300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.kill()
    assert _state(runtime, StoredProfile, victim.id).state == "cancelled"
    screening = _state(runtime, Screening, screening_id)
    assert screening.state == "cancelled" and screening.result is None


def test_database_briefly_down_readyz_503_then_recovers(make_runtime, pg_url):
    proxy = TcpProxy("127.0.0.1", make_url(pg_url).port or 5432).start()
    url = make_url(pg_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    runtime = make_runtime(database_url=url)
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/screenings", json=tiny_request()).status_code == 202

        proxy.stop()
        down = client.get("/readyz")
        assert down.status_code == 503 and down.headers["content-type"].startswith("application/problem+json")
        assert down.json()["checks"]["database"].startswith("unavailable")
        listing = client.get("/v1/screenings")
        assert listing.status_code == 503 and listing.json()["type"].endswith("database-unavailable")
        assert "retry-after" in listing.headers
        assert client.post("/v1/screenings", json=tiny_request(seed=3)).status_code == 503

        proxy.start()
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30, what="readiness")
        assert len(client.get("/v1/screenings").json()["items"]) == 1
        assert client.post("/v1/screenings", json=tiny_request(seed=3)).status_code == 202
    proxy.stop()


def test_pool_exhausted_answers_503_with_retry_after(make_runtime):
    runtime = make_runtime(db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.5)
    pool = runtime.engine.pool
    held = []
    with TestClient(create_app(runtime=runtime), raise_server_exceptions=False) as client:
        try:
            while pool.checkedout() < pool.size() + max(pool._max_overflow, 0):  # every connection taken
                held.append(runtime.engine.connect())
            response = client.get("/v1/screenings")
        finally:
            for connection in held:
                connection.close()
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith(":database-busy")
        assert int(response.headers["retry-after"]) >= 1
        assert client.get("/v1/screenings").status_code == 200  # given back, the pool serves again


def test_postgres_connections_have_a_statement_timeout_and_tcp_keepalives(make_runtime):
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    runtime = make_runtime(db_statement_timeout=0.5, db_keepalives_idle=17)
    with runtime.engine.connect() as connection:
        assert connection.scalar(text("SHOW statement_timeout")) == "500ms"
        params = connection.connection.dbapi_connection.info.get_parameters()
        assert (params["keepalives"], params["keepalives_idle"]) == ("1", "17")
        try:
            connection.execute(text("SELECT pg_sleep(3)"))
        except OperationalError as error:
            assert "statement timeout" in str(error)
        else:
            raise AssertionError("pg_sleep(3) outlived a 0.5 s statement timeout")
