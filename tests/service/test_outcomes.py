"""Outcomes reported by training jobs, against the real PostgreSQL: the endpoint (idempotency, refusals, tenancy
and scopes), and the whole loop: runs reported through the API fill the study's `reported` block, and the
gate's `reported` policy switches from its fallback to a model fitted on them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import store.records
from cli.batch import study_summary
from cli.screen import summary
from jobs.screenings import record_local_result
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings
from phasecore.study.gate import decide
from phasecore.study.quality import RULES
from phasecore.threads import single_thread
from service.app import create_app
from service.client import PhasescreenClient
from store.apikeys import create_api_key
from store.records import with_measured_rules
from tests.helpers.results import planted_pairs
from tests.helpers.services import assert_problem, tiny_request

RUN = {
    "metric": "zero_shot_top1",
    "value": 0.41,
    "success_threshold": 0.3,
    "success_direction": "above",
    "dataset": "digits:test",
    "examples": 400,
    "steps": 60,
    "method": "linear-probe",
    "run_url": "https://runs.example.com/align/1",
    "notes": "frozen towers, linear heads",
}


@pytest.fixture(autouse=True)
def _fresh_study_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.records, "_STUDY_CACHE", {})


def _plant(runtime, pairs: list[tuple[str, str, dict[str, Any]]], tenant: str = "") -> list[str]:
    """Store results as succeeded screenings of ``tenant``; their ids, in order."""
    ids = []
    with runtime.session() as session:
        for vision, language, result in pairs:
            request = {"vision": vision, "language": language, "dataset": result["dataset"]["ref"]}
            row = record_local_result(session, {**request, "options": result["settings"]}, result)
            row.tenant = tenant
            ids.append(row.id)
        session.commit()
    return ids


def _key(runtime, tenant: str, scopes: str = "screen,read,report") -> dict[str, str]:
    with runtime.session() as session:
        _, secret = create_api_key(session, "test", tenant=tenant, scopes=scopes)
        session.commit()
    return {"Authorization": f"Bearer {secret}"}


def test_a_run_is_reported_listed_and_replayed_by_its_idempotency_key(client, runtime):
    [screening] = _plant(runtime, planted_pairs(1, 1))
    path = f"/v1/screenings/{screening}/outcomes"
    first = client.post(path, json=RUN, headers={"Idempotency-Key": "run-1"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert first.headers["location"] == body["href"] == f"{path}/{body['id']}"
    assert body["success"] is True and body["proxy_outcome"] == "failed"  # planted pair (0, 0) failed
    assert {key: body[key] for key in RUN} == RUN

    replay = client.post(path, json=RUN, headers={"Idempotency-Key": "run-1"})
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == body["id"]
    reused = client.post(path, json={**RUN, "value": 0.2}, headers={"Idempotency-Key": "run-1"})
    assert assert_problem(reused, 422, "idempotency-key-reused")["outcome_id"] == body["id"]

    below = {**RUN, "metric": "eval_loss", "value": 0.9, "success_threshold": 0.5, "success_direction": "below"}
    second = client.post(path, json=below).json()
    assert second["success"] is False
    listed = client.get(path).json()
    assert [item["id"] for item in listed["items"]] == [second["id"], body["id"]] and listed["next_cursor"] is None
    page = client.get(path, params={"limit": 1}).json()
    assert [item["id"] for item in page["items"]] == [second["id"]]
    rest = client.get(path, params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [item["id"] for item in rest["items"]] == [body["id"]] and rest["next_cursor"] is None
    assert client.get(body["href"]).json() == body


def test_an_unfinished_screening_an_unknown_one_and_a_value_that_is_not_finite_are_refused(client, runtime):
    queued = client.post("/v1/screenings", json=tiny_request()).json()
    problem = assert_problem(client.post(f"/v1/screenings/{queued['id']}/outcomes", json=RUN), 409)
    assert problem["type"].endswith(":screening-not-succeeded") and problem["state"] == "queued"
    assert "succeeded" in problem["detail"]
    unknown = "00000000-0000-0000-0000-000000000000"
    assert_problem(client.post(f"/v1/screenings/{unknown}/outcomes", json=RUN), 404, "not-found")
    assert_problem(client.get(f"/v1/screenings/{unknown}/outcomes"), 404, "not-found")

    [done] = _plant(runtime, planted_pairs(1, 1))
    path = f"/v1/screenings/{done}/outcomes"
    headers = {"content-type": "application/json"}
    for field, token in (("value", "NaN"), ("value", "Infinity"), ("success_threshold", "-Infinity")):
        raw = "{" + ", ".join(f'"{k}": {token if k == field else repr_json(v)}' for k, v in RUN.items()) + "}"
        problem = assert_problem(client.post(path, content=raw, headers=headers), 422, "validation-error")
        assert field in problem["detail"] and "finite" in problem["detail"]
    for bad in ({"success_direction": "up"}, {"run_url": "javascript:alert(1)"}, {"notes": "x" * 2001}):
        assert_problem(client.post(path, json={**RUN, **bad}), 422, "validation-error")
    assert client.get(path).json()["items"] == []
    # a JSON integer written with a zero fraction is an integer (JSON Schema's reading), as for screenings
    assert client.post(path, json={**RUN, "steps": 60.0}).json()["steps"] == 60
    assert_problem(client.post(path, json={**RUN, "steps": 60.5}), 422, "validation-error")
    assert_problem(client.post(path, json={**RUN, "examples": 2**53 + 1}), 422, "validation-error")


def repr_json(value: Any) -> str:
    import json

    return json.dumps(value)


def test_outcomes_are_per_tenant_and_need_the_report_scope(make_runtime):
    runtime = make_runtime(require_api_key=True)
    acme, globex = _key(runtime, "acme"), _key(runtime, "globex")
    reader, reporter = _key(runtime, "acme", "read"), _key(runtime, "acme", "report")
    [screening] = _plant(runtime, planted_pairs(1, 1), tenant="acme")
    path = f"/v1/screenings/{screening}/outcomes"
    with TestClient(create_app(runtime=runtime)) as client:
        assert_problem(client.post(path, json=RUN), 401, "api-key-required")
        assert_problem(client.post(path, json=RUN, headers=reader), 403, "insufficient-scope")
        assert client.post(path, json=RUN, headers=reporter).status_code == 201
        mine = client.post(path, json=RUN, headers=acme).json()
        # another tenant learns nothing: the screening, its outcomes and one outcome are "not found"
        assert_problem(client.post(path, json=RUN, headers=globex), 404, "not-found")
        assert_problem(client.get(path, headers=globex), 404, "not-found")
        assert_problem(client.get(mine["href"], headers=globex), 404, "not-found")
        assert len(client.get(path, headers=acme).json()["items"]) == 2
        assert_problem(client.get(path, headers=reporter), 403, "insufficient-scope")  # report is not read
        # the study of each tenant counts its own reported runs only
        assert client.get("/v1/study", headers=acme).json()["reported"]["n_outcomes"] == 2
        assert client.get("/v1/study", headers=globex).json()["reported"]["n_outcomes"] == 0


# --- the loop: screen -> train -> report -> the study and the gate read the reported labels -----------------

VISION_TOWERS, LANGUAGE_TOWERS = 5, 5
MEANINGLESS_VISION, MEANINGLESS_LANGUAGE = {0, 1}, {0}  # towers that see noise, not their input
_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEMPLATES = ("a digit", "the handwritten number", "an image of", "a scan showing", "a small picture of")
_WIDTH, _HEAD = 48, 16


def _digits(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, list[list[int]], dict[str, int]]:
    """Images (n, 64), labels (n,), tokenised captions (a template and the class name) and the vocabulary."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(labels))[:n]
    vocabulary = {word: i for i, word in enumerate(sorted({w for t in (*_TEMPLATES, *_NAMES) for w in t.split()}))}
    captions = [
        [vocabulary[w] for w in f"{_TEMPLATES[rng.integers(len(_TEMPLATES))]} {_NAMES[label]}".split()]
        for label in labels[chosen]
    ]
    return torch.tensor(images[chosen] / 16.0, dtype=torch.float32), labels[chosen], captions, vocabulary


def _tower_outputs(i: int, j: int, images: torch.Tensor, captions: list[list[int]], vocabulary: dict[str, int]):
    """The frozen outputs of random-init vision tower ``i`` and language tower ``j`` (a meaningless tower
    reads noise instead of its input), and the language tower as a function, for class prototypes."""
    vision = torch.nn.Sequential(torch.nn.Linear(64, _WIDTH), torch.nn.Tanh())
    torch.manual_seed(100 + i)
    for parameter in vision.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    torch.manual_seed(200 + j)
    words = torch.nn.EmbeddingBag(len(vocabulary), _WIDTH, mode="mean")
    noise = torch.Generator().manual_seed(300 + i)
    seen = torch.rand(images.shape, generator=noise) if i in MEANINGLESS_VISION else images
    babble = torch.Generator().manual_seed(400 + j)

    def language(token_lists: list[list[int]]) -> torch.Tensor:
        flat = torch.tensor([t for tokens in token_lists for t in tokens])
        if j in MEANINGLESS_LANGUAGE:
            flat = torch.randint(len(vocabulary), flat.shape, generator=babble)
        offsets = torch.tensor([0, *np.cumsum([len(tokens) for tokens in token_lists])[:-1]])
        return torch.tanh(words(flat, offsets))

    with torch.no_grad():
        return vision(seen), language(captions), language


def _contrastive_zero_shot(i: int, j: int, data: tuple, *, steps: int = 60, train: int = 400) -> float:
    """Train two linear heads on the frozen towers' outputs with a symmetric InfoNCE loss on the first
    ``train`` pairs; the zero-shot top-1 accuracy of the rest against class prototypes of the captions."""
    images, labels, captions, vocabulary = data
    torch.manual_seed(7)
    v_out, l_out, language = _tower_outputs(i, j, images, captions, vocabulary)
    v_head, l_head = torch.nn.Linear(_WIDTH, _HEAD), torch.nn.Linear(_WIDTH, _HEAD)
    optimiser = torch.optim.Adam([*v_head.parameters(), *l_head.parameters()], lr=0.02)
    targets = torch.arange(train)
    for _ in range(steps):
        v = torch.nn.functional.normalize(v_head(v_out[:train]), dim=1)
        t = torch.nn.functional.normalize(l_head(l_out[:train]), dim=1)
        logits = v @ t.T / 0.1
        loss = torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        prompts = [[vocabulary[w] for w in f"{template} {name}".split()] for name in _NAMES for template in _TEMPLATES]
        prototypes = l_head(language(prompts)).reshape(len(_NAMES), len(_TEMPLATES), _HEAD)
        prototypes = torch.nn.functional.normalize(torch.nn.functional.normalize(prototypes, dim=2).mean(1), dim=1)
        v = torch.nn.functional.normalize(v_head(v_out[train:]), dim=1)
        predicted = (v @ prototypes.T).argmax(1).numpy()
    return float(np.mean(predicted == labels[train:]))


def test_reported_runs_fill_the_study_and_switch_the_gate_from_its_fallback(client, runtime):
    settings = EngineSettings(n=20)
    pairs = planted_pairs(VISION_TOWERS, LANGUAGE_TOWERS, settings=settings)  # 25 pairs of one stratum
    ids = _plant(runtime, pairs)
    api = PhasescreenClient("http://testserver", http=client)
    data = _digits()
    with single_thread():  # tiny matrices: threads would only wait on each other
        accuracy = {
            (i, j): _contrastive_zero_shot(i, j, data) for i in range(VISION_TOWERS) for j in range(LANGUAGE_TOWERS)
        }
    # the training is real: towers that carry meaning align, a tower that sees noise stays at chance (0.1)
    for (i, j), value in accuracy.items():
        meaningless = i in MEANINGLESS_VISION or j in MEANINGLESS_LANGUAGE
        assert (value < 0.3) if meaningless else (value > 0.6), (i, j, value)

    def report(k: int) -> None:
        i, j = divmod(k, LANGUAGE_TOWERS)
        api.report_outcome(
            ids[k], metric="zero_shot_top1", value=accuracy[(i, j)], success_threshold=0.5,
            success_direction="above", dataset="digits:held-out", steps=60, method="linear-probe",
        )  # fmt: skip

    result = pairs[0][2]
    for k in range(19):
        report(k)
    study = api.study().model_dump(mode="json")
    assert study["label_source"] == "measured" and study["status"] == "ok" and study["n"] == 25
    [entry] = study["reported"]["strata"]
    assert entry["stratum"]["proxy_key"] == result["stratum"]["key"] and entry["n"] == 19
    assert entry["stratum"]["reported_metric"] == "zero_shot_top1" and entry["status"] == "insufficient"
    assert entry["rules"] is None and "only 19 labelled pairs" in entry["reason"]
    fallback = decide(result, "reported", study=study)
    assert fallback.fallback == "measured" and "falling back to policy 'measured'" in fallback.reason

    for k in range(19, 25):
        report(k)
    report(0)  # a second run of pair (0, 0): its latest run labels it, the pair counts once
    study = api.study().model_dump(mode="json")
    [entry] = study["reported"]["strata"]
    failed = {(i, j) for i in range(VISION_TOWERS) for j in range(LANGUAGE_TOWERS) if accuracy[(i, j)] < 0.5}
    assert study["reported"]["n_outcomes"] == 26 and entry["n"] == 25 and entry["n_failed"] == len(failed) == 13
    assert entry["status"] == "ok" and entry["model_state"] is not None
    for rule in RULES:
        assert entry["rules"][rule]["spearman_rho"]["n"] == 25
    assert entry["logistic"]["n"] == 25 and entry["logistic"]["auroc"] is not None
    # the confusion table: the planted proxy fails every third pair; the real runs fail the meaningless towers
    proxy_failed = {(i, j) for i in range(VISION_TOWERS) for j in range(LANGUAGE_TOWERS) if (i + j) % 3 == 0}
    table = entry["agreement"]["table"]
    assert table["failed"]["failure"] == len(proxy_failed & failed)
    assert table["aligned"]["success"] == 25 - len(proxy_failed | failed)
    assert entry["agreement"]["n_both_decided"] == 25
    # the stratum filter keeps the reported strata of a proxy key or of their own key
    for key, expected in ((result["stratum"]["key"], 1), (entry["stratum"]["key"], 1), ("0" * 64, 0)):
        assert len(client.get("/v1/study", params={"stratum": key}).json()["reported"]["strata"]) == expected
    fitted = decide(result, "reported", study=study)
    assert fitted.fallback is None and fitted.policy == "reported" and fitted.probability is not None
    assert "25 pairs with a reported zero_shot_top1 on digits:held-out" in fitted.reason

    # a finished pair's predictions carry the reported figures beside the measured ones
    with runtime.session() as session:
        attached = with_measured_rules(session, ScreeningResult.model_validate(result), evidence=False).model_dump(
            mode="json"
        )
    assert set(attached["predictions"]) == {"ntk_difference_rule", "combined_rule"}  # the planted ones
    for rule, prediction in attached["predictions"].items():
        reported = prediction["reported"]
        assert reported["label_source"] == "reported" and reported["status"] == "ok"
        assert reported["n_labelled"] == 25 and reported["stratum"]["reported_dataset"] == "digits:held-out"
        assert reported["auroc"] == entry["rules"][rule]["auroc"]
        assert prediction["measured"]["n_labelled"] == 25

    line = next(line for line in summary(attached).splitlines() if "ntk_difference_rule" in line)
    auroc = entry["rules"]["ntk_difference_rule"]["auroc"]
    assert "reported runs (zero_shot_top1 on digits:held-out): accuracy" in line
    assert f"AUROC {auroc:.2f} over 25 pairs" in line

    shown = study_summary(study)
    assert "reported outcomes of training runs" in shown and "AUROC side by side" in shown
    assert f"agreement over the 25 pairs both decide: {entry['agreement']['agreement']:.3f}" in shown


def test_migration_0006_gives_keys_that_screen_the_report_scope_and_takes_it_back(tmp_path):
    from sqlalchemy import create_engine, text

    from store.db import downgrade, upgrade

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url, "0005")
    engine = create_engine(url)
    keys = {"pipeline": "screen,read", "monitor": "admin", "reader": "read", "all": "screen,read,admin"}
    with engine.begin() as conn:
        for name, scopes in keys.items():
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, name, tenant, scopes, prefix, key_hash, created_at) "
                    "VALUES (:n, :n, :n, :s, 'psk_', :n, '2026-01-01 00:00:00')"
                ),
                {"n": name, "s": scopes},
            )

    def scopes() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT name, scopes FROM api_keys")).tuples().all())

    upgrade(url)
    assert scopes() == {
        "pipeline": "screen,read,report", "monitor": "admin", "reader": "read", "all": "screen,read,admin,report"
    }  # fmt: skip
    downgrade(url, "0005")
    assert scopes() == keys
    engine.dispose()


@pytest.mark.commits  # a live server's request threads cannot share the test's one rolled-back connection
def test_phasescreen_outcome_report_on_a_server(runtime, live_server, capsys):
    import json

    from cli import main

    [screening] = _plant(runtime, planted_pairs(1, 1))
    report = ["outcome", "report", screening, "--metric", "retrieval_r1", "--value", "0.12", "--dataset", "coco:val"]
    server = ["--server", live_server]
    assert main([*report, "--success-above", "0.2", "--idempotency-key", "job-7", *server]) == 0
    line = capsys.readouterr().out
    assert "retrieval_r1 = 0.12 on coco:val -> FAILURE (success when ≥ 0.2)" in line
    # the job retried: the same key and body are one run; another value under that key is refused, exit 2
    assert main([*report, "--success-above", "0.2", "--idempotency-key", "job-7", *server, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*report[:6], "0.5", *report[7:], "--success-above", "0.2", "--idempotency-key", "job-7", *server]) == 2
    assert "Idempotency-Key" in capsys.readouterr().err
    assert main(["outcome", "list", screening, "--json", *server]) == 0
    assert [item["id"] for item in json.loads(capsys.readouterr().out)] == [first["id"]]
    assert main(["study", *server]) == 0
    shown = capsys.readouterr().out
    assert "1 runs reported, 1 labelled pairs" in shown and "retrieval_r1 on coco:val" in shown


@pytest.mark.commits  # a live server's request threads cannot share the test's one rolled-back connection
def test_phasescreen_outcome_simulate_trains_zoo_pairs_and_reports_them_through_the_api(
    runtime, live_server, capsys, tmp_path, monkeypatch
):
    """The loop at a small size (issue 20, item 5): four screened zoo pairs (a joint pair and towers trained alone,
    crossed; width 8, 100 steps, trained here), each trained for real through linear heads by ``outcome simulate``
    and reported over HTTP into the real PostgreSQL; the study's reported block counts them."""
    import itertools
    import json

    from cli import main

    monkeypatch.setenv("PHASESCREEN_HOME", str(tmp_path))
    dataset, settings = "shapes?colors=10&shapes=8&size=32", EngineSettings(n=400, failure_threshold=0.2)
    vision = ["zoo:shapes?tower=vision&width=8&steps=100", "zoo:shapes?tower=vision&mode=unimodal&width=8&steps=100"]
    language = ["zoo:shapes?tower=text&width=8&steps=100", "zoo:shapes?tower=text&mode=unimodal&width=8&steps=100"]
    planted = planted_pairs(2, 2, settings=settings, dataset=dataset)
    pairs = [(v, lang, r) for (v, lang), (_, _, r) in zip(itertools.product(vision, language), planted, strict=True)]
    for v, lang, result in pairs:
        result["vision"]["identity"]["ref"], result["language"]["identity"]["ref"] = v, lang
    ids = _plant(runtime, pairs)
    assert main(["outcome", "simulate", *ids, "--steps", "60", "--server", live_server, "--json"]) == 0
    captured = capsys.readouterr()
    recorded = json.loads(captured.out)
    assert [r["screening_id"] for r in recorded] == ids and "[4/4]" in captured.err
    value = {(p[0], p[1]): r["value"] for p, r in zip(pairs, recorded, strict=True)}
    assert value[(vision[0], language[0])] > value[(vision[1], language[1])] + 0.2, value
    for r in recorded:
        assert r["metric"] == "held_out_contrastive" and r["method"] == "linear-heads" and r["steps"] == 60
        assert r["success"] == (r["value"] >= 0.3) and "seed=1, held-out values" in r["dataset"]
    study = PhasescreenClient(live_server).study().model_dump(mode="json")
    assert study["reported"]["n_outcomes"] == 4
    [entry] = study["reported"]["strata"]
    assert entry["n"] == 4 and entry["stratum"]["reported_metric"] == "held_out_contrastive"
    # names the pairs one way only; --batch needs a server
    assert main(["outcome", "simulate", ids[0], "--results", "x.json"]) == 2
    assert main(["outcome", "simulate", "--batch", "b"]) == 2
    assert "--server URL" in capsys.readouterr().err
