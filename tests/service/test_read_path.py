"""GET /v1/screenings/{id} reads one joined statement (service.screenings.read_screening) instead of the ORM
session's two: it must answer exactly what the ORM path answers, in every state, on PostgreSQL and SQLite."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.runner import open_runtime
from jobs.runtime import Runtime
from jobs.screenings import get_screening
from problems import Problem
from service.app import create_app
from service.screenings import read_screening
from service.settings import ApiSettings
from service.views import load_profiles, screening_out
from store.models import Screening, StoredProfile
from tests.helpers.results import full_result

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def _profile(key: str, state: str, stage: str | None, progress: float) -> StoredProfile:
    return StoredProfile(
        key=key, model_ref="pkg:x", modality="vision", dataset_ref="digits", settings={"n": 20}, state=state,
        stage=stage, progress=progress, attempts=1, meta={"big": list(range(50))}, created_at=T0, updated_at=T0,
    )


def _screening(tenant: str, state: str, **values: object) -> Screening:
    base: dict[str, object] = {
        "owner": "", "tenant": tenant, "fingerprint": "f" * 64, "vision_ref": "pkg:v", "language_ref": "pkg:l",
        "dataset_ref": "digits", "request": {"vision": "pkg:v", "language": "pkg:l", "dataset": "digits",
                                             "options": {"n": 20, "ünïcode": "ok"}},
        "state": state, "progress": 0.0, "attempts": 0, "cancel_requested": False, "created_at": T0,
        "updated_at": T0 + dt.timedelta(seconds=3),
    }
    return Screening(**{**base, **values})


def _populate(runtime: Runtime) -> list[str]:
    """Screenings in every state the view distinguishes; returns their ids."""
    with runtime.session() as session:
        queued_v, queued_l = _profile("a", "queued", None, 0.0), _profile("b", "running", "ntk", 0.25)
        done_v, done_l = _profile("c", "succeeded", None, 0.5), _profile("d", "succeeded", "done", 1.0)
        session.add_all([queued_v, queued_l, done_v, done_l])
        session.flush()
        rows = [
            _screening("", "queued", vision_profile_id=queued_v.id, language_profile_id=queued_l.id),
            _screening("", "queued", vision_profile_id=queued_v.id),  # one profile only
            _screening("", "queued"),  # no profile rows
            _screening(
                "t1", "running", stage="null", progress=0.4, lease_token="lease", attempts=2,
                vision_profile_id=done_v.id, language_profile_id=done_l.id, started_at=T0,
            ),
            _screening(
                "t1", "succeeded", progress=1.0, result=full_result(metrics={"cka": 0.123456789012345}),
                reused_from="00000000-0000-0000-0000-000000000001", vision_profile_id=done_v.id,
                language_profile_id=done_l.id, started_at=T0, finished_at=T0 + dt.timedelta(minutes=5),
            ),
            _screening(
                "t2", "failed", stage="vision:ntk", progress=0.3,
                problem={"type": "urn:phasescreen:problem:out-of-memory", "title": "x", "status": 507, "detail": "y"},
                finished_at=T0,
            ),
            _screening("", "cancelled", stage=None, progress=0.1, finished_at=T0),
        ]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def _orm_view(runtime: Runtime, screening_id: str, tenant: str | None = None) -> dict:
    with runtime.session() as session:
        screening = get_screening(session, screening_id, tenant)
        return screening_out(screening, load_profiles(session, [screening])).model_dump(mode="json")


@pytest.fixture(params=["postgresql", "sqlite"])
def any_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    if request.param == "postgresql":
        yield request.getfixturevalue("runtime")
        return
    # the SQLite file with a Redis queue nobody works: no in-process executor to pick up the queued rows
    settings = ApiSettings(
        home=tmp_path,
        database_url=None,
        redis_url=request.getfixturevalue("redis_url"),
        queue_name=f"test-read-{uuid.uuid4().hex[:8]}",
        auto_migrate=True,
        rate_limit_per_minute=0,
    )
    runtime = open_runtime(settings)
    try:
        yield runtime
    finally:
        runtime.close()


def test_one_statement_reads_what_the_orm_path_reads(any_runtime: Runtime) -> None:
    ids = _populate(any_runtime)
    with TestClient(create_app(runtime=any_runtime)) as client:
        for screening_id in ids:
            expected = _orm_view(any_runtime, screening_id)
            with any_runtime.session() as session:
                assert read_screening(session, screening_id).model_dump(mode="json") == expected
            response = client.get(f"/v1/screenings/{screening_id}")
            assert response.status_code == 200 and response.headers["content-type"] == "application/json"
            assert response.json() == expected
            active = expected["state"] in ("queued", "running")
            assert ("retry-after" in response.headers) == active, (expected["state"], response.headers)
        assert len({tuple(sorted(_orm_view(any_runtime, i)["profiles"])) for i in ids}) == 3  # 2, 1 and 0 profiles


def test_one_statement_hides_other_tenants_and_bad_ids_as_404(any_runtime: Runtime) -> None:
    ids = _populate(any_runtime)
    with any_runtime.session() as session:
        assert read_screening(session, ids[3], "t1").id == ids[3]
        for screening_id, tenant in [(ids[3], "t2"), (ids[0], "t1"), ("nope", None), (ids[0][:-1] + "x", None)]:
            with pytest.raises(Problem) as refused:
                read_screening(session, screening_id, tenant)
            assert refused.value.status == 404
            with pytest.raises(Problem) as also:
                _orm_view(any_runtime, screening_id, tenant)
            assert str(refused.value) == str(also.value)
