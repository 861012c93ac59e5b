"""Batches, the CLI against a server, the gate's exit codes on a server, and /v1/study, against PostgreSQL, Redis
and the real worker (tiny models, as in tests/helpers/tiny.py)."""

from __future__ import annotations

import copy
import csv
import io
import json
import re

import pytest
from sqlalchemy import func, select

from cli import main
from jobs.screenings import record_local_result
from phasecore.screening.batch import CSV_FIELDS, check_document
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings
from phasecore.study.failure_model import predict_failure_probability
from store.batch_models import BatchPair
from store.models import Screening, StoredProfile
from tests.helpers.results import full_result
from tests.helpers.services import work_burst
from tests.helpers.tiny import TINY_LANGUAGE, TINY_OPTIONS, TINY_VISION, batch_request, option_flags, write_grid


def gate(server: str, *extra: str, vision: str = TINY_VISION[0]) -> list[str]:
    argv = ["gate", "--vision", vision, "--language", TINY_LANGUAGE[0], "--dataset", "digits", "--server", server]
    return [*argv, *option_flags(), *extra]


@pytest.mark.commits  # work_burst and a live server thread
def test_batch_end_to_end_through_the_worker_and_the_cli(client, runtime, live_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PHASESCREEN_SERVER", raising=False)
    submitted = client.post("/v1/batches", json=batch_request())
    assert submitted.status_code == 202, submitted.text
    body = submitted.json()
    location = submitted.headers["location"]
    assert location == f"/v1/batches/{body['id']}" and int(submitted.headers["retry-after"]) > 0
    assert body["state"] == "queued" and body["pairs"]["total"] == 4 and body["profiles"]["total"] == 4

    # 2 × 2: four screenings, four profiles shared between them, and only the four profile jobs queued
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(Screening)) == 4
        assert session.scalar(select(func.count()).select_from(BatchPair)) == 4
        profile_ids = set(session.scalars(select(StoredProfile.id)))
    assert len(profile_ids) == 4 and set(runtime.queue.queue.job_ids) == profile_ids
    matrix = body["matrix"]
    assert [[cell["vision"], cell["language"]] for row in matrix for cell in row] == [
        [v, lang] for v in TINY_VISION for lang in TINY_LANGUAGE
    ]

    assert work_burst(runtime.settings)  # the profiles, then each pair step enqueued by its last profile

    done = client.get(location).json()
    assert done["state"] == "succeeded" and done["progress"] == 1.0, done
    assert done["pairs"]["succeeded"] == 4 and done["profiles"] == {**done["profiles"], "succeeded": 4, "total": 4}
    for row in done["matrix"]:
        for cell in row:
            assert cell["state"] == "succeeded" and -1 <= cell["s_ntk_cross_centered"] <= 1
            assert cell["outcome"] in ("aligned", "failed", "inconclusive")
            assert cell["failed"] is (None if cell["outcome"] == "inconclusive" else cell["outcome"] == "failed")
            assert cell["combined_rule"] in (True, False, None)
    with runtime.session() as session:
        assert {p.attempts for p in session.scalars(select(StoredProfile))} == {1}  # each profile computed once
        rows = session.scalars(select(Screening)).all()
        by_vision = {(s.vision_ref, s.vision_profile_id) for s in rows}
        by_language = {(s.language_ref, s.language_profile_id) for s in rows}
    assert len(by_vision) == 2 and len(by_language) == 2  # a model's pairs share its profile

    document = check_document(client.get(f"{location}/results.json").json())
    assert document["id"] == body["id"] and document["state"] == "succeeded"
    for pair in document["pairs"]:
        ScreeningResult.model_validate(pair["result"])
    table = list(csv.DictReader(io.StringIO(client.get(f"{location}/results.csv").text)))
    assert len(table) == 4 and tuple(table[0]) == CSV_FIELDS
    report = client.get(f"{location}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert len(re.findall(r'src="data:image/png;base64,', report.text)) == 4
    missing = client.get("/v1/batches/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")

    # `phasescreen batch --server`: the same grid again, served from the stored results (no worker runs)
    grid = write_grid(tmp_path / "tiny.yaml")
    out = tmp_path / "tiny.results.json"
    assert main(["batch", str(grid), "--server", live_server, "--output", str(out), "-q"]) == 0
    again = json.loads(out.read_text())
    assert again["state"] == "succeeded" and again["id"] != body["id"]
    assert [p["result"] for p in again["pairs"]] == [p["result"] for p in document["pairs"]]
    assert "4 of 4 pairs screened (succeeded)" in capsys.readouterr().out

    # `phasescreen report BATCH --server`: the figures of the server's batch
    assert main(["report", body["id"], "--server", live_server, "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").stat().st_size > 0
    assert len(list((tmp_path / "report").glob("*.png"))) == 4
    capsys.readouterr()

    # the gate on the server: the stored pair's verdict ...
    first = document["pairs"][0]
    predictions = first["result"]["predictions"]
    verdict = predictions["combined_rule"]["predicts_failure"]
    if verdict is None:  # the gate falls back to the AGOP rule; neither: undecided, exit 2
        verdict = predictions["agop_rule"]["predicts_failure"]
    assert main(gate(live_server)) == (2 if verdict is None else 1 if verdict else 0)
    if verdict is not None:
        assert capsys.readouterr().out.startswith("FAIL" if verdict else "PASS")
    verdict = bool(verdict)
    # ... and, planted as the newest stored result of that request, the other verdict
    planted = copy.deepcopy(first["result"])
    planted["predictions"]["combined_rule"].update(
        predicts_failure=not verdict, value=0.1 if verdict else 3.0, note=None
    )
    request = {"vision": first["vision"], "language": first["language"], "dataset": "digits", "options": TINY_OPTIONS}
    with runtime.session() as session:
        record_local_result(session, request, planted)
        session.commit()
    assert main(gate(live_server, "--json")) == (0 if verdict else 1)
    assert json.loads(capsys.readouterr().out)["decision"]["predicts_failure"] is (not verdict)

    # exit 2: a timeout (new settings are queued, and no worker runs) and a reference the server refuses
    assert main(gate(live_server, "--option=seed=1", "--timeout", "1")) == 2
    assert "timed out after 1 s" in capsys.readouterr().err
    assert main(gate(live_server, vision="timm:no_such_net_anywhere")) == 2
    assert "not in the timm registry" in capsys.readouterr().err

    # the measured policy: refused until there are enough labelled pairs, then the fitted model decides
    assert main(gate(live_server, "--policy", "measured")) == 2
    assert "not enough labelled pairs" in capsys.readouterr().err
    # the gate scores a pair with its own stratum's model (METRICS §8): a stratum of other settings is no help
    _plant_labelled(runtime, 24)
    assert main(gate(live_server, "--policy", "measured")) == 2
    assert "not enough labelled pairs" in capsys.readouterr().err
    own = EngineSettings.model_validate(TINY_OPTIONS).stratum("digits")
    _plant_labelled(runtime, 24, stratum=own)
    study = client.get("/v1/study", params={"stratum": own["key"]}).json()
    # the screened pairs' stratum now holds the 24 planted pairs beside the decided ones screened above
    assert study["status"] == "ok" and study["n"] >= 24 and study["stratum"]["key"] == own["key"]
    probability = predict_failure_probability(study["model_state"], planted["metrics"])
    assert main(gate(live_server, "--policy", "measured")) == (1 if probability >= 0.5 else 0)
    assert f"P(failure) = {probability:.3f}" in capsys.readouterr().out


PLANTED_STRATUM = {"key": "5" * 64, "dataset": "digits", "metrics_version": 2, "settings": {"planted": True}}


def _planted_result(
    failed: bool | None,
    verdicts: dict[str, bool | None],
    *,
    inconclusive: bool = False,
    stratum: dict | None = PLANTED_STRATUM,
    version: int | None = 2,
    **metrics: float,
) -> dict:
    outcome = "inconclusive" if inconclusive else ("failed" if failed else "aligned")
    ground_truth = {"outcome": outcome, "failed": None if inconclusive else failed}
    ground_truth["alignment_score"] = 0.05 if inconclusive else (-0.1 if failed else 0.3)
    result = full_result(
        metrics=metrics,
        ground_truth=None if failed is None and not inconclusive else ground_truth,
        predictions={rule: {"predicts_failure": verdict} for rule, verdict in verdicts.items()},
    )
    if version is None:
        del result["metrics_version"]
    else:
        result["metrics_version"] = version
    result["stratum"] = stratum
    return result


def _plant_labelled(runtime, count: int, dataset: str = "digits", **planted_options: object) -> list[tuple[dict, dict]]:
    """Planted pairs over 6 vision × 4 language models; failure alternates like a chequerboard (base rate 1/2).

    The combined rule is right except on 3 pairs (21 of 24); the AGOP rule always predicts failure (12 of 24);
    the cross-phase rule is always wrong; the ΔNTK rule never gives a verdict. ΔNTK separates the outcomes, so
    every rule score that uses it ranks perfectly."""
    planted = []
    with runtime.session() as session:
        for k in range(count):
            i, j = k // 4, k % 4
            failed = (i + j) % 2 == 0
            verdicts = {
                "combined_rule": (not failed) if k in (1, 6, 11) else failed,
                "agop_rule": True,
                "cross_phase_rule": not failed,
                "ntk_difference_rule": None,
            }
            metrics = {
                "s_ntk_cross": 0.2 if failed else 0.9,
                "s_ntk_cross_centered": 0.05 * i,
                "delta_ntk": (0.8 if failed else 0.1) + 0.01 * j,
                "log_agop": 4.0,
                "cka": 0.3 + 0.01 * i,
                "mutual_knn": 0.1 + 0.01 * j,
            }
            request = {
                "vision": f"timm:planted_v{i}",
                "language": f"hf:planted/l{j}",
                "dataset": dataset,
                "options": {"seed": k},
            }
            result = _planted_result(failed, verdicts, **planted_options, **metrics)
            record_local_result(session, request, result)
            planted.append((request, result))
        session.commit()
    return planted


def test_study_endpoint_has_the_planted_answer(client, runtime):
    planted = _plant_labelled(runtime, 24)
    with runtime.session() as session:  # a repeat of one request and an unlabelled pair do not count
        record_local_result(session, *planted[0])
        unlabelled = {"vision": "timm:planted_v9", "language": "hf:planted/l9", "dataset": "digits", "options": {}}
        record_local_result(session, unlabelled, _planted_result(None, {}))
        session.commit()

    study = client.get("/v1/study").json()
    assert study["status"] == "ok" and study["reason"] is None
    assert (study["n"], study["n_failed"], study["failure_base_rate"]) == (24, 12, 0.5)
    assert study["n_models"] == {"vision": 6, "language": 4}
    rules = study["rules"]
    assert rules["combined_rule"]["accuracy"] == pytest.approx(21 / 24)
    assert rules["combined_rule"]["brier"] == pytest.approx(3 / 24)
    assert rules["combined_rule"]["auroc"] == 1.0 and rules["combined_rule"]["claimed_accuracy"] == 0.96
    assert rules["agop_rule"]["accuracy"] == 0.5 and rules["agop_rule"]["auroc"] == 0.5
    assert rules["cross_phase_rule"]["accuracy"] == 0.0
    assert rules["ntk_difference_rule"]["n"] == 0 and rules["ntk_difference_rule"]["accuracy"] is None
    assert study["logistic"]["n"] == 24 and study["logistic"]["accuracy"] == 1.0
    assert study["model_state"]["n"] == 24

    assert study["stratum"] == PLANTED_STRATUM and [s["stratum"]["key"] for s in study["strata"]] == [
        PLANTED_STRATUM["key"]
    ]
    assert study["n_inconclusive"] == 0 and study["n_without_ground_truth"] == 1
    assert rules["combined_rule"]["spearman_rho"]["n"] == 24 and rules["combined_rule"]["spearman_rho"]["rho"] < 0
    assert rules["ntk_difference_rule"]["cv_threshold"]["held_out_accuracy"] == 1.0

    other = client.get("/v1/study", params={"dataset": "cifar10"}).json()
    assert other["status"] == "insufficient" and other["n"] == 0 and "0 labelled pairs" in other["reason"]
    assert other["stratum"] is None and other["strata"] == []


def test_study_strata_are_apart_and_version_1_is_left_out(client, runtime):
    _plant_labelled(runtime, 24)
    thin = {**PLANTED_STRATUM, "key": "6" * 64, "settings": {"planted": "thin"}}
    # a second stratum of 12 inconclusive pairs, and 24 results of METRICS version 1
    _plant_labelled(runtime, 12, dataset="digits-thin", stratum=thin, inconclusive=True)
    _plant_labelled(runtime, 24, dataset="digits-v1", version=1)
    study = client.get("/v1/study").json()
    assert study["excluded_version_1"] == 24 and study["n_records"] == 24 + 12 + 24
    assert [s["stratum"]["key"] for s in study["strata"]] == [PLANTED_STRATUM["key"], thin["key"]]
    assert study["stratum"]["key"] == PLANTED_STRATUM["key"] and study["n"] == 24
    assert study["rules"]["combined_rule"]["accuracy"] == pytest.approx(21 / 24)  # untouched by the other stratum
    only_thin = client.get("/v1/study", params={"stratum": thin["key"]}).json()
    assert only_thin["stratum"]["key"] == thin["key"] and [s["stratum"]["key"] for s in only_thin["strata"]] == [
        thin["key"]
    ]
    assert only_thin["status"] == "insufficient" and only_thin["n"] == 0 and only_thin["n_inconclusive"] == 12
    assert "12 inconclusive left out" in only_thin["reason"]
    unknown = client.get("/v1/study", params={"stratum": "7" * 64}).json()
    assert unknown["status"] == "insufficient" and unknown["stratum"] is None and "7" * 64 in unknown["reason"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"strata", "stratum", "excluded_version_1", "n_inconclusive"} <= set(schema["StudyOut"]["properties"])
    assert {"range_if_inconclusive", "spearman_rho", "cv_threshold"} <= set(schema["RuleQualityOut"]["properties"])


def test_study_below_twenty_labelled_pairs_says_so(client, runtime):
    _plant_labelled(runtime, 12)
    study = client.get("/v1/study").json()
    assert study["status"] == "insufficient" and study["n"] == 12
    assert "at least 20" in study["reason"] and study["rules"] is None and study["model_state"] is None


def test_batch_refusals_are_problems(client, runtime):
    twice = client.post("/v1/batches", json=batch_request(vision=[TINY_VISION[0], TINY_VISION[0]]))
    assert twice.status_code == 422 and "more than once" in twice.json()["detail"]
    unknown = client.post("/v1/batches", json=batch_request(language=["timm:no_such_net_anywhere"]))
    assert unknown.status_code == 422 and "timm registry" in unknown.json()["detail"]
    empty = client.post("/v1/batches", json=batch_request(vision=[]))
    assert empty.status_code == 422
    with runtime.session() as session:  # a refused batch leaves nothing behind
        assert session.scalar(select(func.count()).select_from(Screening)) == 0
    assert runtime.queue.queue.job_ids == []


def test_batch_idempotency_key_same_body_same_batch_other_body_422(client, runtime):
    from store.batch_models import Batch

    headers = {"Idempotency-Key": "grid-7"}
    first = client.post("/v1/batches", json=batch_request(), headers=headers)
    again = client.post("/v1/batches", json=batch_request(), headers=headers)
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    other = client.post("/v1/batches", json=batch_request(name="another"), headers=headers)
    assert other.status_code == 422, other.text
    assert other.headers["content-type"].startswith("application/problem+json")
    assert other.json()["type"].endswith(":idempotency-key-reused")
    assert other.json()["batch_id"] == first.json()["id"]
    bad = client.post("/v1/batches", json=batch_request(), headers={"Idempotency-Key": "é".encode("latin-1") * 3})
    assert bad.status_code == 400
    with runtime.session() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 1
        n_pairs = len(TINY_VISION) * len(TINY_LANGUAGE)
        assert session.scalar(select(func.count()).select_from(Screening)) == n_pairs
    assert client.post("/v1/batches", json=batch_request()).json()["id"] != first.json()["id"]  # no key: new
