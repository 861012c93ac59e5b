"""The study's reported label source (phasecore.study.reported) and the gate's `reported` policy, without a database:
success by the reporter's own threshold, one label per pair (its latest run), the reported stratum, the
proxy-against-reported confusion table, and the policy's fallback to `measured`."""

from __future__ import annotations

import math

import pytest

from phasecore.settings import EngineSettings
from phasecore.study.gate import GateUndecided, decide, require_policy_model
from phasecore.study.quality import RULES
from phasecore.study.reported import agreement, is_success, reported_records, reported_study, stratum_reported
from phasecore.study.strata import study_by_stratum
from store.records import record_of
from tests.helpers.results import planted_pairs


def test_success_is_the_reporters_own_threshold_in_its_direction():
    assert is_success(0.3, 0.3, "above") and not is_success(0.2999, 0.3, "above")
    assert is_success(0.5, 0.5, "below") and not is_success(0.51, 0.5, "below")
    with pytest.raises(ValueError, match="direction"):
        is_success(1.0, 0.5, "up")
    with pytest.raises(ValueError, match="finite"):
        is_success(math.nan, 0.5, "above")


def _pairs(vision: int = 5, language: int = 5) -> dict[str, dict]:
    """Planted proxy records by a fingerprint of their own."""
    settings = EngineSettings(n=20)
    return {
        f"fp{k}": record_of(v, lang, r)
        for k, (v, lang, r) in enumerate(planted_pairs(vision, language, settings=settings))
    }


def _run(
    fingerprint: str, value: float, when: int, *, metric: str = "zero_shot_top1", direction: str = "above"
) -> dict:
    return {
        "id": f"{when:036d}",
        "fingerprint": fingerprint,
        "metric": metric,
        "dataset": "imagenet-1k:val",
        "value": value,
        "success_threshold": 0.3,
        "success_direction": direction,
        "created_at": when,
    }


def test_a_pair_is_labelled_by_its_latest_run_per_metric_and_dataset():
    pairs = _pairs(1, 2)
    runs = [
        _run("fp0", 0.5, 2),  # latest of fp0 on zero-shot: a success, after a failure
        _run("fp0", 0.1, 1),
        _run("fp0", 0.9, 3, metric="retrieval_r1"),  # another metric: another stratum
        _run("fp1", 0.6, 1, direction="below"),  # a loss of 0.6 above the bar of 0.3: a failure
        _run("unknown", 0.9, 1),  # no stored result of this request: left out
    ]
    records = {(r["vision"], r["language"], r["reported"]["metric"]): r for r in reported_records(pairs, runs)}
    assert len(records) == 3
    zero_shot = records[(pairs["fp0"]["vision"], pairs["fp0"]["language"], "zero_shot_top1")]
    assert zero_shot["outcome"] == "aligned" and zero_shot["reported"]["n_runs"] == 2
    assert zero_shot["reported"]["value"] == 0.5 and zero_shot["alignment_score"] == 0.5
    assert zero_shot["proxy_outcome"] == "failed"  # the planted proxy fails pair (0, 0)
    loss = records[(pairs["fp1"]["vision"], pairs["fp1"]["language"], "zero_shot_top1")]
    assert loss["outcome"] == "failed" and loss["alignment_score"] == -0.6  # larger is better, as for the proxy
    retrieval = records[(pairs["fp0"]["vision"], pairs["fp0"]["language"], "retrieval_r1")]
    assert retrieval["stratum"]["key"] != zero_shot["stratum"]["key"]
    assert retrieval["stratum"]["proxy_key"] == zero_shot["stratum"]["proxy_key"] == pairs["fp0"]["stratum"]["key"]


def test_the_confusion_table_counts_agreement_and_kappa():
    records = [
        *[{"proxy_outcome": "aligned", "failed": False}] * 6,
        *[{"proxy_outcome": "aligned", "failed": True}] * 2,
        *[{"proxy_outcome": "failed", "failed": True}] * 3,
        *[{"proxy_outcome": "failed", "failed": False}] * 1,
        *[{"proxy_outcome": "inconclusive", "failed": True}] * 4,
        *[{"proxy_outcome": "none", "failed": False}] * 1,
    ]
    table = agreement(records)
    assert table["table"]["aligned"] == {"success": 6, "failure": 2}
    assert table["table"]["inconclusive"] == {"success": 0, "failure": 4}
    assert table["n"] == 17 and table["n_both_decided"] == 12 and table["n_agree"] == 9
    assert table["agreement"] == pytest.approx(9 / 12)
    # κ = (p_o − p_e) / (1 − p_e) with p_e = P(proxy aligned) P(success) + P(proxy failed) P(failure)
    p_e = (8 / 12) * (7 / 12) + (4 / 12) * (5 / 12)
    assert table["cohen_kappa"] == pytest.approx((9 / 12 - p_e) / (1 - p_e))
    assert table["proxy_aligned_reported_failure"] == 2 and table["proxy_failed_reported_success"] == 1
    assert agreement([{"proxy_outcome": "inconclusive", "failed": True}])["agreement"] is None


def _reported_failures(pairs: dict[str, dict]) -> list[dict]:
    """A run per pair: the pairs of vision models 0 and 1 fail, the others succeed (the proxy disagrees)."""
    return [
        _run(fp, 0.1 if record["vision"].endswith(("v0", "v1")) else 0.6, k)
        for k, (fp, record) in enumerate(pairs.items())
    ]


def test_the_reported_study_gives_every_figure_once_20_pairs_hold_both_outcomes():
    pairs = _pairs()
    runs = _reported_failures(pairs)
    few = reported_study(pairs, runs[:19])
    [entry] = few["strata"]
    assert few["label_source"] == "reported" and entry["status"] == "insufficient" and entry["n"] == 19
    assert entry["agreement"]["n"] == 19
    full = reported_study(pairs, runs)
    [entry] = full["strata"]
    assert entry["status"] == "ok" and entry["n"] == 25 and entry["n_failed"] == 10 and entry["n_inconclusive"] == 0
    assert set(entry["rules"]) == set(RULES) and entry["logistic"]["n"] == 25 and entry["model_state"]
    result = planted_pairs(1, 1, settings=EngineSettings(n=20))[0][2]
    reported = stratum_reported(result, full)
    assert {figures["label_source"] for figures in reported.values()} == {"reported"}
    assert reported["ntk_difference_rule"]["auroc"] == entry["rules"]["ntk_difference_rule"]["auroc"]
    assert reported["agop_rule"]["stratum"]["reported_metric"] == "zero_shot_top1"
    insufficient = stratum_reported(result, few)["agop_rule"]
    assert insufficient["status"] == "insufficient" and "19 pairs of this stratum" in insufficient["reason"]
    assert "no training-run outcome" in stratum_reported(result, None)["agop_rule"]["reason"]


def test_the_reported_policy_falls_back_to_measured_until_its_own_model_exists():
    pairs = _pairs()
    runs = _reported_failures(pairs)
    result = planted_pairs(1, 1, settings=EngineSettings(n=20))[0][2]
    measured = study_by_stratum(list(pairs.values()))  # the planted proxy labels: 25 decided pairs
    study = {**measured, "reported": reported_study(pairs, runs[:19])}
    fallback = decide(result, "reported", study=study)
    assert fallback.policy == "reported" and fallback.fallback == "measured"
    assert fallback.probability == decide(result, "measured", study=measured).probability
    assert "falling back to policy 'measured'" in fallback.reason and "only 19 labelled pairs" in fallback.reason

    study = {**measured, "reported": reported_study(pairs, runs)}
    fitted = decide(result, "reported", study=study)
    assert fitted.fallback is None and fitted.rule == "logistic"
    assert fitted.probability != fallback.probability  # fitted on other labels
    assert "25 pairs with a reported zero_shot_top1 on imagenet-1k:val" in fitted.reason
    require_policy_model(study, "reported")

    # neither a reported nor a measured model: no verdict, and the message names both
    empty = {**study_by_stratum([]), "reported": reported_study({}, [])}
    with pytest.raises(GateUndecided, match="policy 'reported'.*fallback.*policy 'measured'"):
        require_policy_model(empty, "reported")
    with pytest.raises(GateUndecided, match="policy 'reported' has no fitted model"):
        decide(result, "reported", study=empty)


def _report_argv(screening_id: str, value: str, *extra: str) -> list[str]:
    return [
        "outcome",
        "report",
        screening_id,
        "--metric",
        "zero_shot_top1",
        "--value",
        value,
        "--dataset",
        "val",
        *extra,
    ]


def test_phasescreen_outcome_report_and_study_locally(local_env, capsys) -> None:
    """The embedded default: a result stored in the local database, two runs reported on it by the command line,
    the reported block of `phasescreen study`, and the errors a job can act on (exit 2, one line)."""
    import json

    from cli import main
    from jobs.screenings import store_local_result

    vision, language, result = planted_pairs(1, 1, settings=EngineSettings(n=20))[0]
    screening = store_local_result(
        {"vision": vision, "language": language, "dataset": "digits", "options": result["settings"]}, result
    )
    assert main(_report_argv(screening, "0.41", "--success-above", "0.3", "--method", "lit")) == 0
    line = capsys.readouterr().out
    assert f"of screening {screening}: zero_shot_top1 = 0.41 on val -> SUCCESS (success when ≥ 0.3)" in line
    assert "proxy outcome: failed" in line
    assert main([*_report_argv(screening, "0.41", "--success-below", "0.3"), "--json"]) == 0
    below = json.loads(capsys.readouterr().out)
    assert below["success"] is False and below["success_direction"] == "below"

    assert main(["outcome", "list", screening, "--json"]) == 0
    assert [item["id"] for item in json.loads(capsys.readouterr().out)][0] == below["id"]
    assert main(["study", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)["reported"]
    assert reported["n_outcomes"] == 2 and reported["n_records"] == 1  # the latest run labels the pair
    assert reported["strata"][0]["n_failed"] == 1 and reported["strata"][0]["agreement"]["n_agree"] == 1
    assert main(["study"]) == 0
    assert "reported outcomes of training runs" in capsys.readouterr().out

    unknown = "00000000-0000-0000-0000-000000000000"
    for argv, message in (
        (_report_argv(unknown, "0.4", "--success-above", "0.3"), f"no screening with id '{unknown}'"),
        (_report_argv(screening, "nan", "--success-above", "0.3"), "invalid outcome: value: Input should be a finite"),
        (_report_argv(screening, "0.4", "--success-above", "0.3", "--run-url", "ftp://x"), "run_url"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    with pytest.raises(SystemExit):  # a direction is required, and only one
        main([*_report_argv(screening, "0.4"), "--success-above", "0.3", "--success-below", "0.5"])

    # the gate's reported policy: with one reported pair and no measured model, no verdict before any screening
    from tests.helpers.tiny import gate_argv

    assert main(gate_argv("timm:test_vit?weights=random", "pkg:all-minilm-l6-v2", "--policy", "reported")) == 2
    err = capsys.readouterr().err
    assert "policy 'reported' needs the logistic model" in err and "not enough labelled pairs" in err
