"""`phasescreen evidence write | check` over the local store, and `phasescreen study` showing the deployment's
own figures and the shipped evidence in two labelled blocks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli import main
from phasecore.settings import EngineSettings
from phasecore.study.evidence import EVIDENCE_PATH_ENV
from tests.helpers.results import planted_pairs


def _store(pairs, settings: EngineSettings) -> None:
    from jobs.screenings import record_local_result
    from store.db import local_session

    with local_session() as session:
        for vision, language, result in pairs:
            request = {"vision": vision, "language": language, "dataset": result["dataset"]["ref"]}
            record_local_result(session, {**request, "options": settings.model_dump(mode="json")}, result)
        session.commit()


def test_evidence_is_written_from_the_local_store_checked_and_shown_beside_the_own_study(
    local_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    settings = EngineSettings(n=64, probes=2)
    _store(planted_pairs(settings=settings, dataset="shapes"), settings)
    _store(planted_pairs(2, 2, settings=settings, dataset="digits"), settings)  # another dataset, filtered out
    grid = tmp_path / "evidence.yaml"
    grid.write_text("name: evidence\ndataset: shapes\noptions: {n: 64, probes: 2}\nvision: [a]\nlanguage: [b]\n")
    out = tmp_path / "evidence" / "shipped.json"

    argv = ["evidence", "write", "--out", str(out), "--dataset", "shapes", "--grid", str(grid)]
    # nothing stored on that dataset: refused, no file (an empty evidence file would ship "no evidence" silently)
    assert main([*argv[:4], "--dataset", "cifar10"]) == 2
    assert "holds no succeeded pair on dataset cifar10" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--command", "make evidence"]) == 0
    assert "25 records, 1 strata" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["command"] == "make evidence" and len(document["records"]) == 25
    assert document["settings"]["grid"]["options"] == {"n": 64, "probes": 2}
    assert document["settings"]["dataset_filter"] == "shapes"
    if (Path(__file__).parents[2] / ".git").exists():  # a checkout (a worktree's .git is a file): its HEAD
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", document["commit"]), document["commit"]
    stratum = document["study"]["strata"][0]
    assert stratum["stratum"] == settings.stratum("shapes") and stratum["n"] == 25
    base_rate = stratum["failure_base_rate"]

    assert main(["evidence", "check", str(out)]) == 0
    assert "agrees" in capsys.readouterr().out
    tampered = tmp_path / "tampered.json"
    document["study"]["strata"][0]["failure_base_rate"] = 0.5
    tampered.write_text(json.dumps(document))
    assert main(["evidence", "check", str(tampered), "--json"]) == 1
    check = json.loads(capsys.readouterr().out)
    assert not check["agrees"] and check["differences"] == [
        f"study.strata[0].failure_base_rate: recomputed {base_rate!r}, stored 0.5"
    ]
    assert main(["evidence", "check", str(tmp_path / "absent.json")]) == 2

    # `phasescreen study`: two labelled blocks, own first; the counts of each are its own
    monkeypatch.setenv(EVIDENCE_PATH_ENV, str(out))
    capsys.readouterr()
    assert main(["study", "--dataset", "shapes"]) == 0
    text = capsys.readouterr().out
    own_at, shipped_at = text.index("deployment's own stored pairs"), text.index("shipped evidence (source: shipped")
    assert own_at < shipped_at and f"created {document['created_at']}" in text and "command make evidence" in text
    assert text.count("25 decided pairs") == 2  # 25 own (the same pairs, stored here), 25 shipped: not 50
    assert "options n=64, probes=2 falls in it" in text
    assert main(["study", "--json"]) == 0
    study = json.loads(capsys.readouterr().out)
    assert study["source"] == "deployment" and study["n_records"] == 29 and study["n"] == 25
    assert study["shipped_evidence"]["n_records"] == 25 and len(study["shipped_evidence"]["strata"]) == 1

    monkeypatch.setenv(EVIDENCE_PATH_ENV, str(tmp_path / "absent.json"))
    assert main(["study"]) == 0
    assert "shipped evidence: none installed" in capsys.readouterr().out


def test_the_screen_output_labels_shipped_figures():
    from cli.screen import _measured
    from phasecore.screening.result import RulePrediction

    base = {"value": 1.0, "threshold": 0.5, "predicts_failure": True, "claimed_accuracy": 0.94, "source": "paper"}
    figures = {"status": "ok", "reason": None, "n_labelled": 36, "failure_base_rate": 0.4, "n": 30, "auroc": 0.8,
               "brier": 0.2, "accuracy": 0.8}  # fmt: skip
    shipped = RulePrediction.model_validate({**base, "measured": {
        **figures, "source": "shipped evidence", "deployment_n_labelled": 7,
        "evidence": {"created_at": "2025-03-01T10:00:00+00:00", "commit": "abc", "command": "make evidence"},
    }})  # fmt: skip
    expected = "; measured 80% over 30 pairs (shipped evidence of 2025-03-01; 7 of this deployment's own)"
    assert _measured(shipped) == expected
    own = RulePrediction.model_validate({**base, "measured": {**figures, "source": "deployment"}})
    assert _measured(own) == "; measured 80% over 30 pairs"
