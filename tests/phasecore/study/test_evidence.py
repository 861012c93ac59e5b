"""The shipped evidence (phasecore.study.evidence): its file, written by the code from study records, and the lookup
that shows its figures as ``measured`` in its strata until the deployment's own decided pairs there reach 20,
never mixing the two sources. Every evidence file here is written by ``write_evidence`` from synthetic records
into a tmp dir; the package's own file (if any) is checked by recomputing its study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phasecore.screening.result import MeasuredRule
from phasecore.study.evidence import (
    DEFAULT_EVIDENCE_PATH,
    EVIDENCE_PATH_ENV,
    MIN_LABELLED,
    EvidenceError,
    attach_measured_with_evidence,
    evidence_path,
    evidence_summary,
    read_evidence,
    shipped_evidence,
    verify_evidence,
    write_evidence,
)
from phasecore.study.quality import RULES
from phasecore.study.strata import measured_rules, study_by_stratum
from tests.helpers.study import STRATUM_A, STRATUM_B, hidden_records, rule_predictions

NO_LABELS = {"evidence": None, "deployment_n_labelled": None, "shipped_evidence_strata": None}
STRATUM_C = {"key": "c" * 64, "dataset": "cifar10", "metrics_version": 2, "settings": {"n": 256}}


def _result(stratum: dict | None = STRATUM_A) -> dict:
    return {"metrics_version": 2, "stratum": stratum, "predictions": rule_predictions(0.7, 4.0, 0.3)}


def _own(n_decided: int, *, n_inconclusive: int = 0, seed: int = 7) -> list[dict]:
    """Records of the deployment in stratum A: ``n_decided`` decided pairs of both outcomes (then
    ``n_inconclusive`` inconclusive ones), from a grid unlike the evidence's."""
    pool = hidden_records(8, 8, seed=seed)
    failed = [r for r in pool if r["outcome"] == "failed"]
    aligned = [r for r in pool if r["outcome"] == "aligned"]
    half = n_decided // 2
    decided = failed[:half] + aligned[: n_decided - half]
    inconclusive = [{**r, "outcome": "inconclusive", "failed": None} for r in aligned[len(aligned) - n_inconclusive :]]
    assert len(decided) == n_decided and len(inconclusive) == n_inconclusive
    return decided + inconclusive


@pytest.fixture
def evidence_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An evidence file written by the code from synthetic records (36 pairs in stratum A, 10 in B), named by
    $PHASESCREEN_EVIDENCE_PATH."""
    path = tmp_path / "evidence" / "shipped.json"
    records = hidden_records(seed=1) + hidden_records(2, 5, seed=2, stratum=STRATUM_B)
    write_evidence(path, records, command="make evidence", settings={"grid": "synthetic"}, commit="abc1234")
    monkeypatch.setenv(EVIDENCE_PATH_ENV, str(path))
    return path


def test_the_writer_produces_a_file_whose_study_recomputes(evidence_file: Path):
    document = json.loads(evidence_file.read_text())
    assert set(document) == {
        "kind", "format", "metrics_version", "created_at", "commit", "command", "settings", "study", "records",
    }  # fmt: skip
    assert (document["kind"], document["format"], document["metrics_version"]) == ("phasescreen-evidence", 1, 2)
    assert (document["commit"], document["command"], document["settings"]) == ("abc1234", "make evidence", {
        "grid": "synthetic"
    })  # fmt: skip
    assert len(document["records"]) == 46
    by_key = {s["stratum"]["key"]: s for s in document["study"]["strata"]}
    assert by_key[STRATUM_A["key"]]["n"] == 36 and by_key[STRATUM_B["key"]]["n"] == 10
    # the stored study is the study of the stored records, and the check says so
    assert document["study"] == json.loads(json.dumps(study_by_stratum(document["records"])))
    assert verify_evidence(document) == []
    # a figure typed by hand is caught
    document["study"]["strata"][0]["rules"]["agop_rule"]["accuracy"] = 0.94
    differences = verify_evidence(document)
    assert len(differences) == 1 and "rules.agop_rule.accuracy" in differences[0] and "stored 0.94" in differences[0]
    # records keep only what the study reads: no attached measured figures travel into the file
    record = json.loads(evidence_file.read_text())["records"][0]
    assert set(record["predictions"]["agop_rule"]) == {"value", "predicts_failure"}


def test_a_result_in_a_shipped_stratum_shows_the_shipped_figures_labelled(evidence_file: Path):
    evidence = shipped_evidence()
    assert evidence is not None and evidence.commit == "abc1234"
    shipped_a = next(s for s in evidence.study["strata"] if s["stratum"]["key"] == STRATUM_A["key"])
    attached = attach_measured_with_evidence(_result(), study_by_stratum([]), evidence)
    for rule in RULES:
        measured = attached["predictions"][rule]["measured"]
        assert measured["source"] == "shipped evidence" and measured["status"] == "ok"
        assert measured["n_labelled"] == 36 and measured["deployment_n_labelled"] == 0
        assert measured["accuracy"] == shipped_a["rules"][rule]["accuracy"]
        assert measured["failure_base_rate"] == shipped_a["failure_base_rate"]
        label = {"created_at": evidence.created_at, "commit": "abc1234", "command": "make evidence"}
        assert measured["evidence"] == label
        assert measured["stratum"]["key"] == STRATUM_A["key"]
        typed = MeasuredRule.model_validate(measured)
        assert typed.source == "shipped evidence" and typed.evidence and typed.evidence.commit == "abc1234"
    json.dumps(attached, allow_nan=False)

    # a thin shipped stratum: the shipped figures' own reason, still labelled as shipped
    thin = attach_measured_with_evidence(_result(STRATUM_B), study_by_stratum([]), evidence)
    measured = thin["predictions"]["agop_rule"]["measured"]
    assert measured["source"] == "shipped evidence" and measured["status"] == "insufficient"
    assert "shipped evidence holds 10 decided pairs" in measured["reason"] and measured["n_labelled"] == 10


@pytest.mark.parametrize("n_inconclusive", [0, 6])
def test_own_figures_take_over_at_20_decided_pairs_and_the_sources_never_mix(evidence_file: Path, n_inconclusive):
    evidence = shipped_evidence()
    assert evidence is not None
    shipped_a = next(s for s in evidence.study["strata"] if s["stratum"]["key"] == STRATUM_A["key"])

    # 19 decided pairs of its own (inconclusive ones do not count): still the shipped figures, alone
    own_19 = study_by_stratum(_own(MIN_LABELLED - 1, n_inconclusive=n_inconclusive))
    measured = attach_measured_with_evidence(_result(), own_19, evidence)["predictions"]
    for rule in RULES:
        m = measured[rule]["measured"]
        assert m["source"] == "shipped evidence" and m["deployment_n_labelled"] == 19
        assert m["n_labelled"] == 36 and m["n_inconclusive"] == shipped_a["n_inconclusive"] == 0
        assert m["failure_base_rate"] == shipped_a["failure_base_rate"]
        assert m["n"] == shipped_a["rules"][rule]["n"] and m["auroc"] == shipped_a["rules"][rule]["auroc"]

    # 20: the deployment's own figures, alone; nothing of the shipped file is left in them
    own_20 = study_by_stratum(_own(MIN_LABELLED, n_inconclusive=n_inconclusive))
    own_a = own_20["strata"][0]
    assert own_a["n"] == 20 and own_a["status"] == "ok"
    measured = attach_measured_with_evidence(_result(), own_20, evidence)["predictions"]
    for rule in RULES:
        m = measured[rule]["measured"]
        assert m["source"] == "deployment" and m["n_labelled"] == 20 and m["n_inconclusive"] == n_inconclusive
        assert m == {**measured_rules(own_a)[rule], **NO_LABELS}


def test_a_result_in_another_stratum_is_told_which_strata_the_evidence_covers(evidence_file: Path):
    evidence = shipped_evidence()
    assert evidence is not None
    own = study_by_stratum(_own(5))  # a few of its own, in stratum A: nothing in C
    measured = attach_measured_with_evidence(_result(STRATUM_C), own, evidence)["predictions"]["combined_rule"]
    m = measured["measured"]
    assert m["source"] == "deployment" and m["status"] == "insufficient" and m["n_labelled"] == 0
    assert m["accuracy"] is None and m["stratum"]["key"] == STRATUM_C["key"]
    assert "holds 0 decided pairs" in m["reason"]
    assert f"The shipped evidence ({evidence.created_at}) covers" in m["reason"]
    assert "stratum aaaaaaaaaaaa (dataset digits, options n=64; 36 decided pairs)" in m["reason"]
    assert "stratum bbbbbbbbbbbb (dataset digits, options n=128; 10 decided pairs)" in m["reason"]
    covered = {s["key"]: s for s in m["shipped_evidence_strata"]}
    assert set(covered) == {STRATUM_A["key"], STRATUM_B["key"]}
    assert covered[STRATUM_A["key"]] == {
        "key": STRATUM_A["key"], "dataset": "digits", "metrics_version": 2, "options": {"n": 64},
        "n_labelled": 36, "status": "ok",
    }  # fmt: skip
    typed = MeasuredRule.model_validate(m)
    assert typed.shipped_evidence_strata and typed.shipped_evidence_strata[0].options == {"n": 64}

    # a result without a version-2 stratum cannot use any stratum's figures; it is told why and what exists
    old = attach_measured_with_evidence({"predictions": rule_predictions(0.7, 4.0, 0.3)}, own, evidence)
    m = old["predictions"]["agop_rule"]["measured"]
    assert m["source"] == "deployment" and "version 2" in m["reason"] and len(m["shipped_evidence_strata"]) == 2


def test_no_evidence_file_means_no_shipped_evidence_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(EVIDENCE_PATH_ENV, str(tmp_path / "absent.json"))
    assert evidence_path() == tmp_path / "absent.json" and shipped_evidence() is None
    assert evidence_summary(None) is None
    measured = attach_measured_with_evidence(_result(), study_by_stratum(_own(5)), None)
    m = measured["predictions"]["agop_rule"]["measured"]
    assert m["source"] == "deployment" and m["status"] == "insufficient" and m["n_labelled"] == 5
    assert m["reason"].endswith("No shipped evidence is installed.") and m["shipped_evidence_strata"] is None

    # enough pairs of its own: the same figures as ever, marked as the deployment's
    own = study_by_stratum(_own(24))
    m = attach_measured_with_evidence(_result(), own, None)["predictions"]["agop_rule"]["measured"]
    assert m == {**measured_rules(own["strata"][0])["agop_rule"], **NO_LABELS} and m["source"] == "deployment"

    monkeypatch.delenv(EVIDENCE_PATH_ENV)
    assert evidence_path() == DEFAULT_EVIDENCE_PATH == (
        Path(__file__).parents[3] / "phasecore/study/evidence/shipped.json"
    )


def test_a_file_this_code_cannot_read_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "shipped.json"
    document = write_evidence(path, hidden_records(seed=1), command="test")
    path.write_text(json.dumps({**document, "metrics_version": 1}))
    monkeypatch.setenv(EVIDENCE_PATH_ENV, str(path))
    with pytest.raises(EvidenceError, match="METRICS version 1"):
        read_evidence(path)
    assert shipped_evidence() is None
    path.write_text("{not json")
    with pytest.raises(EvidenceError, match="cannot read"):
        read_evidence(path)
    assert shipped_evidence() is None
    # written again by the code: read again (the loader follows the file, not its first version)
    write_evidence(path, hidden_records(seed=1), command="test again")
    evidence = shipped_evidence()
    assert evidence is not None and evidence.command == "test again"


def test_the_study_summary_shows_the_shipped_strata_filtered_like_the_deployments(evidence_file: Path):
    evidence = shipped_evidence()
    summary = evidence_summary(evidence)
    assert summary is not None and summary["source"] == "shipped evidence" and summary["n_records"] == 46
    assert [s["stratum"]["key"] for s in summary["strata"]] == [STRATUM_A["key"], STRATUM_B["key"]]
    only_b = evidence_summary(evidence, stratum=STRATUM_B["key"])
    assert only_b is not None and [s["stratum"]["key"] for s in only_b["strata"]] == [STRATUM_B["key"]]
    none = evidence_summary(evidence, dataset="cifar10")
    assert none is not None and none["strata"] == []


def test_the_package_evidence_file_recomputes_from_its_records():
    """The file the package ships (written by `make evidence`) holds the study of its own records."""
    if not DEFAULT_EVIDENCE_PATH.exists():
        pytest.skip("this checkout ships no evidence file yet (`make evidence` writes it)")
    document = read_evidence(DEFAULT_EVIDENCE_PATH)
    assert verify_evidence(document) == []
    assert shipped_evidence(DEFAULT_EVIDENCE_PATH) is not None
