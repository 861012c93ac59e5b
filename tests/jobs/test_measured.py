"""The measured figures a worker attaches to a result, over the real API and worker: with keys required they
count only the screening's own tenant's stored pairs; anonymous mode counts every stored pair; a fresh
deployment shows the shipped evidence of the result's stratum, labelled, beside (never inside) its own study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import store.records
from jobs.functions import _with_measured_rules
from jobs.screenings import record_local_result
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings
from phasecore.study.evidence import EVIDENCE_PATH_ENV, write_evidence
from phasecore.study.quality import RULES
from service.app import create_app
from store.apikeys import create_api_key
from store.models import Screening
from store.records import record_of
from tests.helpers.results import planted_pairs
from tests.helpers.services import tiny_request, work_burst


def _key(runtime, tenant: str) -> str:
    with runtime.session() as session:
        _, secret = create_api_key(session, "test", tenant=tenant)
        session.commit()
    return secret


def _as(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _stratum_of(runtime, screening_id: str) -> tuple[EngineSettings, str]:
    """The settings and dataset of a queued screening: its result's stratum is ``settings.stratum(dataset)``."""
    with runtime.session() as session:
        request = session.get(Screening, screening_id).request
    return EngineSettings.model_validate(request["options"]), request["dataset"]


def _plant(runtime, tenant: str, pairs: list[tuple[str, str, dict[str, Any]]], settings: EngineSettings) -> None:
    """Store decided pairs as succeeded screenings of ``tenant``."""
    with runtime.session() as session:
        for vision, language, result in pairs:
            request = {"vision": vision, "language": language, "dataset": result["dataset"]["ref"]}
            row = record_local_result(session, {**request, "options": settings.model_dump(mode="json")}, result)
            row.tenant = tenant
        session.commit()


@pytest.fixture(autouse=True)
def _fresh_study_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.records, "_STUDY_CACHE", {})


@pytest.mark.commits  # the worker's burst reads through its own connections
def test_a_tenants_result_counts_only_its_own_tenants_pairs(make_runtime, monkeypatch, tmp_path: Path):
    monkeypatch.setenv(EVIDENCE_PATH_ENV, str(tmp_path / "none.json"))  # no shipped evidence here
    runtime = make_runtime(require_api_key=True)
    acme, globex = _key(runtime, "acme"), _key(runtime, "globex")
    with TestClient(create_app(runtime=runtime)) as client:
        mine = client.post("/v1/screenings", json=tiny_request(), headers=_as(acme)).json()
        theirs = client.post("/v1/screenings", json=tiny_request(), headers=_as(globex)).json()
        settings, dataset = _stratum_of(runtime, mine["id"])
        # acme already holds 24 decided pairs in this stratum (both outcomes): enough for figures of its own
        _plant(runtime, "acme", planted_pairs(4, 6, settings=settings, dataset=dataset), settings)

        assert work_burst(runtime.settings)
        done = {
            name: client.get(f"/v1/screenings/{body['id']}", headers=_as(key)).json()
            for name, body, key in (("acme", mine, acme), ("globex", theirs, globex))
        }
        for body in done.values():
            assert body["state"] == "succeeded", body["problem"]
            assert body["result"]["stratum"]["key"] == settings.stratum(dataset)["key"]
        for rule in RULES:
            own = done["acme"]["result"]["predictions"][rule]["measured"]
            assert own["source"] == "deployment" and own["status"] == "ok" and own["n_labelled"] == 24
            other = done["globex"]["result"]["predictions"][rule]["measured"]
            assert other["source"] == "deployment" and other["status"] == "insufficient"
            assert other["n_labelled"] == 0 and other["failure_base_rate"] is None and other["accuracy"] is None
            assert "holds 0 decided pairs" in other["reason"] and "No shipped evidence" in other["reason"]
        # the study of each tenant likewise, and neither sees shipped evidence here
        acme_study = client.get("/v1/study", headers=_as(acme)).json()
        globex_study = client.get("/v1/study", headers=_as(globex)).json()
        decided = done["acme"]["result"]["ground_truth"]["outcome"] in ("aligned", "failed")
        assert acme_study["n"] == 24 + decided and acme_study["n_records"] == 25
        assert acme_study["source"] == "deployment"
        assert globex_study["n_records"] == 1 and globex_study["shipped_evidence"] is None

    # anonymous mode (as before keys were required): every stored pair counts, whoever stored it
    anonymous = make_runtime(require_api_key=False)
    result = ScreeningResult.model_validate(done["globex"]["result"])
    measured = _with_measured_rules(anonymous, result, theirs["id"]).predictions["agop_rule"].measured
    assert measured is not None and measured.n_labelled >= 24 and measured.status == "ok"
    # and keyed again (a fresh cache: per tenant, never shared): globex's own count, not acme's
    keyed = _with_measured_rules(runtime, result, theirs["id"]).predictions["agop_rule"].measured
    assert keyed is not None and keyed.n_labelled < 24 and keyed.status == "insufficient"


@pytest.mark.commits  # the worker's burst reads through its own connections
def test_a_fresh_deployment_shows_the_shipped_evidence_of_the_results_stratum(runtime, monkeypatch, tmp_path):
    with TestClient(create_app(runtime=runtime)) as client:
        submitted = client.post("/v1/screenings", json=tiny_request()).json()
        settings, dataset = _stratum_of(runtime, submitted["id"])
        # the evidence: 25 decided pairs in this very stratum, written by the code into a file of our own
        records = [record_of(v, lang, r) for v, lang, r in planted_pairs(settings=settings, dataset=dataset)]
        path = tmp_path / "shipped.json"
        evidence = write_evidence(path, records, command="make evidence", commit="feedbeef")
        monkeypatch.setenv(EVIDENCE_PATH_ENV, str(path))

        assert work_burst(runtime.settings)
        body = client.get(f"/v1/screenings/{submitted['id']}").json()
        assert body["state"] == "succeeded", body["problem"]
        shipped = evidence["study"]["strata"][0]
        for rule in RULES:
            measured = body["result"]["predictions"][rule]["measured"]
            assert measured["source"] == "shipped evidence" and measured["status"] == "ok"
            assert measured["n_labelled"] == shipped["n"] == 25 and measured["deployment_n_labelled"] == 0
            assert measured["accuracy"] == shipped["rules"][rule]["accuracy"]
            assert measured["evidence"] == {
                "created_at": evidence["created_at"], "commit": "feedbeef", "command": "make evidence"
            }  # fmt: skip

        # /v1/study: the deployment's own pair at the top level, the shipped study beside it, not pooled
        study = client.get("/v1/study").json()
        assert study["source"] == "deployment" and study["n_records"] == 1 and study["n"] <= 1
        beside = study["shipped_evidence"]
        assert beside["source"] == "shipped evidence" and beside["commit"] == "feedbeef"
        assert beside["n_records"] == 25 and [s["n"] for s in beside["strata"]] == [25]
        assert beside["strata"][0]["stratum"]["key"] == body["result"]["stratum"]["key"]
        assert client.get("/v1/study", params={"dataset": "cifar10"}).json()["shipped_evidence"]["strata"] == []
