"""Prediction quality on synthetic records with a known answer (METRICS §8).

The outcome of every synthetic pair comes from a hidden failure propensity ``h`` (plus model effects, so that
pairs sharing a model are alike); the rules' inputs are separate noisy functions of ``h``, or pure noise. No
label is computed from a rule's own input.
"""

import json
import math

import numpy as np
import pytest

from phasecore.screening.result import ScreeningResult
from phasecore.study.failure_model import FEATURES, predict_failure_probability
from phasecore.study.quality import RULES, _logistic_cv_probabilities, prediction_quality
from phasecore.study.strata import attach_measured, measured_rules, study_by_stratum
from tests.helpers.results import full_result
from tests.helpers.study import STRATUM_A, STRATUM_B, hidden_records, rule_predictions


@pytest.fixture(scope="module")
def quality():
    return prediction_quality(hidden_records(noise=0.3))


def test_informative_rules_and_the_model_beat_chance(quality):
    assert quality["status"] == "ok" and quality["reason"] is None
    assert quality["n"] == 36 and quality["n_inconclusive"] == 0 and quality["n_pairs"] == 36
    assert 0 < quality["failure_base_rate"] < 1
    assert quality["n_models"] == {"vision": 6, "language": 6}
    ntk = quality["rules"]["ntk_difference_rule"]
    assert ntk["n"] == 36 and ntk["auroc"] > 0.85 and ntk["accuracy"] > 0.75
    assert ntk["brier"] == pytest.approx(1 - ntk["accuracy"]) and "0/1" in ntk["brier_form"]
    assert quality["rules"]["cross_phase_rule"]["auroc"] > 0.85
    logistic = quality["logistic"]
    assert logistic["n"] == 36 and logistic["excluded"] == 0 and logistic["fallback_predictions"] == 0
    assert logistic["auroc"] > 0.8 and logistic["accuracy"] > 0.7 and logistic["brier"] < 0.2
    # without inconclusive pairs both ends of every range are the figures themselves
    for figures in (ntk, logistic):
        ends = figures["range_if_inconclusive"]
        assert ends["as_failed"] == ends["as_aligned"] == {k: figures[k] for k in ("n", "accuracy", "auroc", "brier")}


def test_a_pure_noise_rule_ranks_at_chance_over_many_pairs():
    out = prediction_quality(hidden_records(20, 20, seed=3))
    assert out["n"] == 400
    agop = out["rules"]["agop_rule"]  # log(AGOP) is drawn independently of the hidden propensity
    assert abs(agop["auroc"] - 0.5) < 0.08
    assert abs(agop["spearman_rho"]["rho"]) < 0.12
    majority = max(out["failure_base_rate"], 1 - out["failure_base_rate"])
    assert abs(agop["cv_threshold"]["held_out_accuracy"] - majority) < 0.12
    assert agop["claimed_accuracy"] == 0.94  # the paper's claim stands beside a measured chance level
    assert out["rules"]["ntk_difference_rule"]["auroc"] > 0.8


def test_spearman_sign_follows_the_score_orientation(quality):
    """Scores are oriented so that larger predicts failure; alignment_score is larger when aligned: ρ < 0."""
    for rule in ("ntk_difference_rule", "cross_phase_rule"):
        rho = quality["rules"][rule]["spearman_rho"]
        assert rho["n"] == 36 and rho["rho"] < -0.6 and rho["p"] < 1e-3
    flipped = [{**r, "alignment_score": -r["alignment_score"]} for r in hidden_records(noise=0.3)]
    assert prediction_quality(flipped)["rules"]["ntk_difference_rule"]["spearman_rho"]["rho"] > 0.6


def _tiny(**extra) -> list[dict]:
    """Four decided pairs, two inconclusive and one without ground truth; figures checked by hand."""
    rows = [  # (vision, language, outcome, ΔNTK score, ΔNTK rule verdict)
        ("v0", "l0", "failed", 0.9, True),
        ("v1", "l1", "failed", 0.3, False),
        ("v2", "l2", "aligned", 0.4, False),
        ("v3", "l3", "aligned", 0.1, False),
        ("v4", "l4", "inconclusive", 0.8, True),
        ("v5", "l5", "inconclusive", 0.05, True),
        ("v6", "l6", None, 0.5, True),
    ]
    records = []
    for k, (vision, language, outcome, score, verdict) in enumerate(rows):
        records.append(
            {
                "vision": vision,
                "language": language,
                "outcome": outcome,
                "failed": {"failed": True, "aligned": False}.get(outcome),
                "alignment_score": None if outcome is None else 1.0 - score,
                **{name: 0.1 * k + 0.01 * f for f, name in enumerate(FEATURES)},
                "delta_ntk": score,
                "predictions": {"ntk_difference_rule": {"value": score, "threshold": 0.5, "predicts_failure": verdict}},
                **extra,
            }
        )
    return records


def test_only_decided_pairs_are_pooled_and_inconclusive_ones_bound_the_range():
    out = prediction_quality(_tiny(), min_labelled=4)
    assert out["status"] == "ok"
    assert (out["n"], out["n_failed"], out["n_inconclusive"], out["n_without_ground_truth"]) == (4, 2, 2, 1)
    ntk = out["rules"]["ntk_difference_rule"]
    # verdicts on the decided pairs: right, wrong, right, right
    assert (ntk["n"], ntk["accuracy"], ntk["brier"]) == (4, 0.75, 0.25)
    # ranking: failed {0.9, 0.3} over aligned {0.4, 0.1}: 3 of 4 comparisons
    assert ntk["auroc"] == 0.75
    as_failed, as_aligned = ntk["range_if_inconclusive"]["as_failed"], ntk["range_if_inconclusive"]["as_aligned"]
    # both inconclusive pairs have the verdict "fails": right when counted failed, wrong when counted aligned
    assert (as_failed["n"], as_failed["accuracy"]) == (6, pytest.approx(5 / 6))
    assert as_failed["brier"] == pytest.approx(1 / 6)
    assert (as_aligned["n"], as_aligned["accuracy"], as_aligned["brier"]) == (6, 0.5, 0.5)
    # failed {0.9, 0.3, 0.8, 0.05} over aligned {0.4, 0.1}: 5 of 8; failed {0.9, 0.3} over {0.4, 0.1, 0.8, 0.05}: 6 of 8
    assert (as_failed["auroc"], as_aligned["auroc"]) == (5 / 8, 6 / 8)
    assert ntk["spearman_rho"]["n"] == 6  # every pair with an alignment score, inconclusive ones included
    assert ntk["spearman_rho"]["rho"] == pytest.approx(-1.0)
    assert out["logistic"]["n"] == 4
    assert out["logistic"]["range_if_inconclusive"]["as_failed"]["n"] == 6
    json.dumps(out, allow_nan=False)

    # what an inconclusive pair carries (a stray `failed`, its verdict, its features) never reaches the pooled figures
    changed = _tiny()
    for record in changed[4:6]:
        record.update(failed=True, delta_ntk=-5.0, cka=99.0)
        record["predictions"]["ntk_difference_rule"]["predicts_failure"] = False
    again = prediction_quality(changed, min_labelled=4)
    for key in ("n", "accuracy", "auroc", "brier"):
        assert again["rules"]["ntk_difference_rule"][key] == ntk[key]
        assert again["logistic"][key] == out["logistic"][key]
    assert again["model_state"] == out["model_state"]


def test_the_cross_validated_threshold_recovers_a_planted_one():
    """Failure when the hidden propensity exceeds 0.6; ΔNTK measures it with a little noise."""
    rng = np.random.default_rng(7)
    records = []
    for i in range(8):
        for j in range(8):
            hidden = float(rng.uniform(0, 1))
            delta = hidden + float(rng.normal(0, 0.02))
            records.append(
                {
                    "vision": f"v{i}",
                    "language": f"l{j}",
                    "outcome": "failed" if hidden > 0.6 else "aligned",
                    "alignment_score": 0.6 - hidden,
                    **{name: float(rng.uniform(0, 1)) for name in FEATURES},
                    "delta_ntk": delta,
                    "predictions": rule_predictions(delta, 4.0, 0.5),
                }
            )
    cv = prediction_quality(records)["rules"]["ntk_difference_rule"]["cv_threshold"]
    assert cv["threshold"] == pytest.approx(0.6, abs=0.05)
    assert cv["training_accuracy"] > 0.9 and cv["held_out_accuracy"] > 0.9
    assert cv["n"] == 64 and cv["no_threshold"] == 0
    assert 0.5 < cv["fold_thresholds"]["min"] <= cv["fold_thresholds"]["median"] <= cv["fold_thresholds"]["max"] < 0.7
    assert cv["score"].startswith("delta_ntk")


def test_clipping_and_scaling_are_fitted_on_the_training_folds_only():
    """An extreme finite value in one pair must not reach the prediction of a pair whose fold holds it out.

    With clipping bounds taken over all pairs before cross-validation (the old code), the +inf log(AGOP) of
    training pairs was clipped to the held-out pair's extreme value, so the other predictions moved."""
    records = hidden_records(noise=0.3)
    for index in (3 * 6 + 4, 4 * 6 + 5, 5 * 6 + 3):  # (v3, l4), (v4, l5), (v5, l3): training pairs of the others
        records[index] = {**records[index], "log_agop": math.inf}
    moderate = [dict(r) for r in records]
    extreme = [dict(r) for r in records]
    moderate[0]["log_agop"], extreme[0]["log_agop"] = 6.0, 1e4  # pair (v0, l0)
    y = np.array([r["outcome"] == "failed" for r in records])
    p_moderate, _, keep, _ = _logistic_cv_probabilities(moderate, y)
    p_extreme, _, _, _ = _logistic_cv_probabilities(extreme, y)
    sharing = [k for k, i in enumerate(keep) if i != 0 and (i // 6 == 0 or i % 6 == 0)]
    assert len(sharing) == 10
    np.testing.assert_array_equal(p_moderate[sharing], p_extreme[sharing])
    assert p_moderate[0] != p_extreme[0]  # the pair itself is clipped to its own fold's bounds


def test_version_1_results_are_left_out_and_counted():
    current = hidden_records()
    old = hidden_records(seed=5, version=1) + hidden_records(seed=6, version=None, stratum=None)
    for record in old[:36]:
        record["stratum"] = STRATUM_A  # even in the same stratum
    study = study_by_stratum(old + current)
    assert study["excluded_version_1"] == 72 and study["n_records"] == 108 and study["excluded_no_stratum"] == 0
    assert len(study["strata"]) == 1
    alone = study_by_stratum(current)["strata"][0]
    assert study["strata"][0]["rules"] == alone["rules"] and study["strata"][0]["n"] == 36


def test_two_strata_are_never_mixed():
    a = hidden_records(seed=1)
    b = hidden_records(seed=2, stratum=STRATUM_B)
    for record in b:  # stratum B says the opposite; it must not move A's figures
        record["outcome"] = "aligned" if record["outcome"] == "failed" else "failed"
    mixed = study_by_stratum([x for pair in zip(b, a, strict=True) for x in pair])
    by_key = {s["stratum"]["key"]: s for s in mixed["strata"]}
    assert set(by_key) == {STRATUM_A["key"], STRATUM_B["key"]}
    assert by_key[STRATUM_A["key"]]["stratum"] == STRATUM_A
    expected = prediction_quality(a)
    for key in ("n", "n_failed", "rules", "logistic", "model_state"):
        assert by_key[STRATUM_A["key"]][key] == expected[key]
    assert by_key[STRATUM_A["key"]]["rules"]["ntk_difference_rule"]["auroc"] > 0.7
    assert by_key[STRATUM_B["key"]]["rules"]["ntk_difference_rule"]["auroc"] < 0.3
    json.dumps(mixed, allow_nan=False)

    # a result gets the figures of its own stratum only
    result = {"metrics_version": 2, "stratum": STRATUM_B, "predictions": rule_predictions(0.7, 4.0, 0.3)}
    measured = attach_measured(result, mixed)["predictions"]["ntk_difference_rule"]["measured"]
    assert measured["stratum"]["key"] == STRATUM_B["key"]
    assert measured["auroc"] == by_key[STRATUM_B["key"]]["rules"]["ntk_difference_rule"]["auroc"]


def test_few_decided_pairs_or_one_outcome_are_insufficient():
    many_inconclusive = hidden_records(margin=1.5, seed=4)
    out = prediction_quality(many_inconclusive)
    n, n_inconclusive = out["n"], out["n_inconclusive"]
    assert n < 20 and n + n_inconclusive == 36 and n_inconclusive > 0
    assert out["status"] == "insufficient"
    assert f"only {n} labelled pairs with a decided outcome ({n_inconclusive} inconclusive left out)" in out["reason"]
    assert "at least 20" in out["reason"]
    assert out["rules"] is None and out["logistic"] is None and out["model_state"] is None

    one_outcome = [{**r, "outcome": "aligned", "failed": False} for r in hidden_records()]
    out = prediction_quality(one_outcome)
    assert out["status"] == "insufficient" and "both outcomes" in out["reason"] and out["model_state"] is None

    unlabelled = [{**r, "outcome": None, "failed": None} for r in hidden_records()]
    out = prediction_quality(unlabelled)
    assert (out["n"], out["n_without_ground_truth"], out["status"]) == (0, 36, "insufficient")


def test_a_result_of_a_thin_or_unknown_stratum_is_told_why():
    study = study_by_stratum(hidden_records(seed=1) + hidden_records(2, 5, seed=2, stratum=STRATUM_B))
    thin = {"metrics_version": 2, "stratum": STRATUM_B, "predictions": rule_predictions(0.7, 4.0, 0.3)}
    measured = attach_measured(thin, study)["predictions"]["agop_rule"]["measured"]
    assert measured["status"] == "insufficient" and measured["accuracy"] is None
    assert f"stratum {STRATUM_B['key'][:12]}" in measured["reason"] and "holds 10 decided pairs" in measured["reason"]
    assert "at least 20" in measured["reason"] and measured["stratum"]["key"] == STRATUM_B["key"]

    other = {"key": "c" * 64, "dataset": "cifar10", "metrics_version": 2, "settings": {}}
    unknown = attach_measured({**thin, "stratum": other}, study)["predictions"]["agop_rule"]["measured"]
    assert unknown["status"] == "insufficient" and "holds 0 decided pairs" in unknown["reason"]
    assert "c" * 12 in unknown["reason"] and "cifar10" in unknown["reason"]

    version_1 = attach_measured({"predictions": thin["predictions"]}, study)["predictions"]["agop_rule"]["measured"]
    assert version_1["status"] == "insufficient" and "version 2" in version_1["reason"]


def test_result_shape_and_json(quality):
    assert set(quality) == {
        "status", "reason", "n", "n_failed", "failure_base_rate", "n_inconclusive", "n_without_ground_truth",
        "n_pairs", "min_labelled", "n_models", "cv", "rules", "logistic", "model_state",
        "comparators", "base_rate", "bootstrap",
    }  # fmt: skip
    assert set(quality["rules"]) == set(RULES)
    for rule in quality["rules"].values():
        assert set(rule) == {
            "n", "accuracy", "auroc", "brier", "brier_form", "claimed_accuracy", "source",
            "range_if_inconclusive", "spearman_rho", "cv_threshold", "interval95",
        }  # fmt: skip
        assert set(rule["range_if_inconclusive"]) == {"as_failed", "as_aligned"}
        assert set(rule["spearman_rho"]) == {"rho", "p", "n", "score"}
        assert set(rule["cv_threshold"]) == {
            "score", "threshold", "training_accuracy", "held_out_accuracy", "n", "no_threshold", "fold_thresholds",
        }  # fmt: skip
    assert quality["logistic"]["features"] == list(FEATURES)
    json.dumps(quality, allow_nan=False)


def test_the_fitted_model_gives_probabilities_for_the_gate(quality):
    state = json.loads(json.dumps(quality["model_state"]))  # survives a round trip through storage
    base = {"s_ntk_cross_centered": 0.5, "log_agop": 5.0, "cka": 0.5, "mutual_knn": 0.1}
    risky = predict_failure_probability(state, {**base, "delta_ntk": 0.95, "s_ntk_cross": 0.05})
    safe = predict_failure_probability(state, {**base, "delta_ntk": 0.05, "s_ntk_cross": 0.95})
    assert risky > 0.8 and safe < 0.2
    clipped = predict_failure_probability(state, {**base, "delta_ntk": 0.95, "s_ntk_cross": 0.05, "log_agop": math.inf})
    assert 0.0 <= clipped <= 1.0
    with pytest.raises(ValueError, match="delta_ntk"):
        predict_failure_probability(state, {**base, "s_ntk_cross": 0.5})


def test_leave_one_model_out_never_trains_on_the_held_out_models():
    """With a single vision model, every pair shares it: no pair may train another's prediction."""
    out = prediction_quality(hidden_records(1, 40, seed=11))
    assert out["status"] == "ok" and out["n_models"]["vision"] == 1
    assert out["logistic"]["fallback_predictions"] == 40
    assert out["logistic"]["auroc"] == 0.5  # constant predictions: no information leaked
    cv = out["rules"]["ntk_difference_rule"]["cv_threshold"]
    assert cv["no_threshold"] == 40 and cv["n"] == 0 and cv["held_out_accuracy"] is None
    assert out["model_state"] is not None  # the final model is fitted on everything


def test_unusable_features_are_excluded_or_clipped():
    records = hidden_records()
    records[0] = {**records[0], "cka": None}
    records[1] = {**records[1], "log_agop": math.inf}
    out = prediction_quality(records)
    assert out["logistic"]["excluded"] == 1
    assert out["logistic"]["n"] == 35
    json.dumps(out, allow_nan=False)


def test_measured_figures_sit_beside_the_claims():
    """A result gets, per rule, the measured figures of its stratum next to the paper's claimed accuracy."""
    from phasecore.screening.result import RulePrediction

    study = study_by_stratum(hidden_records(noise=0.3))
    stratum = study["strata"][0]
    result = {
        "metrics_version": 2,
        "stratum": STRATUM_A,
        "predictions": {"agop_rule": {"value": 2e6, "threshold": 1e6, "predicts_failure": True,
                                      "claimed_accuracy": 0.94, "source": "paper claim"}},
    }  # fmt: skip
    attached = attach_measured(result, study)
    rule = attached["predictions"]["agop_rule"]
    assert rule["claimed_accuracy"] == 0.94 and "measured" not in result["predictions"]["agop_rule"]
    measured = rule["measured"]
    assert measured["status"] == "ok" and measured["n_labelled"] == stratum["n"] == 36
    assert measured["accuracy"] == stratum["rules"]["agop_rule"]["accuracy"]
    assert measured["n_inconclusive"] == 0 and measured["stratum"] == STRATUM_A
    assert measured["spearman_rho"] == stratum["rules"]["agop_rule"]["spearman_rho"]
    assert measured["cv_threshold"] == stratum["rules"]["agop_rule"]["cv_threshold"]
    RulePrediction.model_validate(rule)
    json.dumps(attached, allow_nan=False)


def test_the_study_behind_measured_figures_is_reused_for_a_while(monkeypatch):
    """Pair jobs attach the study's figures; one worker reads the stored results once per minute, not per pair."""
    import store.records as study

    calls = []

    class _Study:  # what run_study returns, reduced to what the cache keeps (its JSON form)
        def model_dump(self, **_: object) -> dict:
            return study_by_stratum([])

    monkeypatch.setattr(study, "run_study", lambda session, **kw: calls.append(kw["tenant"]) or _Study())
    monkeypatch.setattr(study, "_STUDY_CACHE", {})

    class Session:
        def get_bind(self):
            return type("Bind", (), {"url": "sqlite:///study-cache-test"})()

    result = ScreeningResult.model_validate(
        {
            **full_result(predictions={"agop_rule": {"value": 1.0, "threshold": 1e6, "predicts_failure": False}}),
            "stratum": STRATUM_A,
        }
    )
    first = study.with_measured_rules(Session(), result)
    study.with_measured_rules(Session(), result)
    measured = first.predictions["agop_rule"].measured
    assert len(calls) == 1 and measured is not None and measured.status == "insufficient"
    study.with_measured_rules(Session(), result, max_age=0.0)
    assert calls == [None, None]
    # one study per tenant (never another tenant's), and a tenant idle past max_age leaves the cache
    study.with_measured_rules(Session(), result, tenant="acme")
    study.with_measured_rules(Session(), result, tenant="acme")
    assert calls == [None, None, "acme"]
    url = "sqlite:///study-cache-test"
    assert set(study._STUDY_CACHE) == {(url, None), (url, "acme")}
    study.with_measured_rules(Session(), result, tenant="globex", max_age=0.0)
    assert calls[-1] == "globex" and set(study._STUDY_CACHE) == {(url, "globex")}


def test_the_cli_prints_one_block_per_stratum():
    from cli.batch import study_summary

    study = study_by_stratum(
        hidden_records(seed=1, margin=0.1) + hidden_records(2, 5, seed=2, stratum=STRATUM_B) + hidden_records(version=1)
    )
    text = study_summary(study)
    assert "36 stored result(s) of METRICS version 1 left out" in text
    assert text.count("stratum aaaaaaaaaaaa — dataset digits") == 1 and text.count("stratum bbbbbbbbbbbb") == 1
    assert text.index("aaaaaaaaaaaa") < text.index("bbbbbbbbbbbb") and "insufficient: only 10 labelled" in text
    assert "inconclusive pairs counted as failed … as aligned" in text and "0/1 forecasts" in text
    assert "insufficient" in study_summary(study_by_stratum([]) | prediction_quality([]))


def test_comparators_base_rate_and_model_bootstrap_intervals():
    """METRICS §8, 2026-12-07: each pair metric as a single-feature predictor with its direction fitted (an
    informative one that predicts failure when small still ranks well), the base rate as the no-information
    forecast, and every figure with a two-way bootstrap interval over models that holds the point estimate."""
    records = hidden_records(noise=0.3)
    for record in records:  # informative, but larger means aligned: the fitted direction must flip it
        record["s_ntk_cross_unbiased"] = -record["delta_ntk"]
    quality = prediction_quality(records)
    comparators = quality["comparators"]
    assert set(comparators) == {"s_ntk_cross_centered", "s_ntk_cross_unbiased", "cka", "mutual_knn"}
    assert comparators["s_ntk_cross_unbiased"]["auroc"] > 0.8
    assert abs(comparators["cka"]["auroc"] - 0.5) < 0.25
    y = np.array([r["outcome"] == "failed" for r in records if r["outcome"] in ("aligned", "failed")])
    base = quality["base_rate"]
    assert base["auroc"] is None and base["accuracy"] <= max(y.mean(), 1 - y.mean()) + 1e-9
    assert base["brier"] > comparators["s_ntk_cross_unbiased"]["brier"]
    assert quality["bootstrap"]["draws"] == 1000
    for figures in (*quality["rules"].values(), quality["logistic"], *comparators.values()):
        interval = figures["interval95"]
        for name in ("accuracy", "auroc", "brier"):
            if figures[name] is None:
                continue
            low, high = interval[name]
            assert low <= figures[name] + 1e-9 and figures[name] <= high + 1e-9 and high - low > 0
    assert quality["rules"]["ntk_difference_rule"]["interval95"]["n_draws"]["auroc"] > 900
    measured = measured_rules(quality)["ntk_difference_rule"]
    assert measured["interval95"] == quality["rules"]["ntk_difference_rule"]["interval95"]
    json.dumps(quality, allow_nan=False)
