"""Prediction quality on planted records with a known answer (METRICS §8)."""

import json
import math

import numpy as np
import pytest

from phasecore.rules import pair_rules
from phasecore.study import FEATURES, RULES, predict_failure_probability, prediction_quality


def planted_records(*, vision=6, language=6, seed=0):
    """A vision × language grid where failure is exactly ΔNTK > 0.5; every other feature is noise."""
    rng = np.random.default_rng(seed)
    s_v = np.linspace(0.05, 0.95, vision)
    s_l = rng.permutation(np.linspace(0.1, 0.99, language))
    agop = {f"v{i}": 10 ** rng.uniform(2, 9) for i in range(vision)}
    agop.update({f"l{j}": 10 ** rng.uniform(2, 9) for j in range(language)})
    records = []
    for i in range(vision):
        for j in range(language):
            cross = float(rng.uniform(0, 1))
            derived, predictions = pair_rules(
                s_ntk_vision=s_v[i],
                s_ntk_language=s_l[j],
                agop_ratio_vision=agop[f"v{i}"],
                agop_ratio_language=agop[f"l{j}"],
                s_ntk_cross=cross,
            )
            records.append(
                {
                    "vision": f"timm:v{i}",
                    "language": f"hf:l{j}",
                    "failed": bool(derived["delta_ntk"] > 0.5),
                    "s_ntk_cross": cross,
                    "s_ntk_cross_centered": float(rng.uniform(0, 1)),
                    "delta_ntk": derived["delta_ntk"],
                    "log_agop": derived["log_agop"],
                    "cka": float(rng.uniform(0, 1)),
                    "mutual_knn": float(rng.uniform(0, 0.3)),
                    "predictions": predictions,
                }
            )
    return records


@pytest.fixture(scope="module")
def quality():
    return prediction_quality(planted_records())


def test_a_feature_that_determines_failure_is_found(quality):
    assert quality["status"] == "ok" and quality["reason"] is None
    assert quality["n"] == 36
    assert 0 < quality["failure_base_rate"] < 1
    assert quality["n_models"] == {"vision": 6, "language": 6}
    ntk = quality["rules"]["ntk_difference_rule"]
    assert ntk["accuracy"] == 1.0 and ntk["auroc"] == 1.0 and ntk["brier"] == 0.0 and ntk["n"] == 36
    logistic = quality["logistic"]
    assert logistic["n"] == 36 and logistic["excluded"] == 0 and logistic["fallback_predictions"] == 0
    assert logistic["auroc"] > 0.95
    assert logistic["accuracy"] > 0.85
    assert logistic["brier"] < 0.15
    # the AGOP rule is noise on this grid: measured accuracy far from the paper's claimed 0.94
    agop = quality["rules"]["agop_rule"]
    assert agop["claimed_accuracy"] == 0.94
    assert agop["auroc"] < 0.8


def test_result_shape_and_json(quality):
    assert set(quality) == {
        "status", "reason", "n", "n_failed", "failure_base_rate", "min_labelled", "n_models", "cv",
        "rules", "logistic", "model_state",
    }  # fmt: skip
    assert set(quality["rules"]) == set(RULES)
    for rule in quality["rules"].values():
        assert set(rule) == {"n", "accuracy", "auroc", "brier", "claimed_accuracy", "source"}
    assert quality["logistic"]["features"] == list(FEATURES)
    json.dumps(quality, allow_nan=False)


def test_the_fitted_model_gives_probabilities_for_the_gate(quality):
    state = json.loads(json.dumps(quality["model_state"]))  # survives a round trip through storage
    base = {"s_ntk_cross": 0.5, "s_ntk_cross_centered": 0.5, "log_agop": 5.0, "cka": 0.5, "mutual_knn": 0.1}
    risky = predict_failure_probability(state, {**base, "delta_ntk": 0.85})
    safe = predict_failure_probability(state, {**base, "delta_ntk": 0.05})
    assert risky > 0.8 and safe < 0.2
    clipped = predict_failure_probability(state, {**base, "delta_ntk": 0.85, "log_agop": math.inf})
    assert 0.0 <= clipped <= 1.0
    with pytest.raises(ValueError, match="delta_ntk"):
        predict_failure_probability(state, base)


def test_few_labelled_pairs_are_insufficient():
    records = planted_records(vision=3, language=3)
    out = prediction_quality(records)
    assert out["status"] == "insufficient"
    assert "only 9 labelled pairs" in out["reason"] and "20" in out["reason"]
    assert out["rules"] is None and out["logistic"] is None and out["model_state"] is None
    unlabelled = [{**r, "failed": None} for r in planted_records()]
    assert prediction_quality(unlabelled)["n"] == 0
    assert prediction_quality(unlabelled)["status"] == "insufficient"


def test_one_outcome_only_is_insufficient():
    records = [{**r, "failed": False} for r in planted_records()]
    out = prediction_quality(records)
    assert out["status"] == "insufficient"
    assert "both outcomes" in out["reason"]
    assert out["model_state"] is None


def test_leave_one_model_out_never_trains_on_the_held_out_models():
    """With a single vision model, every pair shares it: no pair may train another's prediction."""
    records = planted_records(vision=1, language=24)
    records = [{**r, "failed": bool(r["delta_ntk"] > 0.3)} for r in records]
    out = prediction_quality(records)
    assert out["status"] == "ok"
    assert out["logistic"]["fallback_predictions"] == 24
    assert out["logistic"]["auroc"] == 0.5  # constant predictions: no information leaked
    assert out["model_state"] is not None  # the final model is fitted on everything


def test_unusable_features_are_excluded_or_clipped():
    records = planted_records()
    records[0] = {**records[0], "cka": None}
    records[1] = {**records[1], "log_agop": math.inf}
    out = prediction_quality(records)
    assert out["logistic"]["excluded"] == 1
    assert out["logistic"]["n"] == 35
    json.dumps(out, allow_nan=False)


def test_measured_figures_sit_beside_the_claims(quality):
    """A result gets, per rule, the service's measured accuracy next to the paper's claimed one."""
    from phasecore.schema import RulePrediction
    from phasecore.study import attach_measured

    result = {"predictions": {"agop_rule": {"value": 2e6, "threshold": 1e6, "predicts_failure": True,
                                            "claimed_accuracy": 0.94, "source": "paper claim"}}}
    attached = attach_measured(result, quality)
    rule = attached["predictions"]["agop_rule"]
    assert rule["claimed_accuracy"] == 0.94 and "measured" not in result["predictions"]["agop_rule"]
    assert rule["measured"]["status"] == "ok" and rule["measured"]["n_labelled"] == quality["n"]
    assert rule["measured"]["accuracy"] == quality["rules"]["agop_rule"]["accuracy"]
    RulePrediction.model_validate(rule)

    early = attach_measured(result, prediction_quality(planted_records()[:5]))["predictions"]["agop_rule"]
    assert early["measured"]["status"] == "insufficient" and early["measured"]["accuracy"] is None
    assert "at least 20" in early["measured"]["reason"]


def test_the_study_behind_measured_figures_is_reused_for_a_while(monkeypatch):
    """Pair jobs attach the study's figures; one worker reads the stored results once per minute, not per pair."""
    import service.study as study

    calls = []
    monkeypatch.setattr(study, "run_study", lambda session: calls.append(1) or prediction_quality([]))
    monkeypatch.setattr(study, "_STUDY_CACHE", {})

    class Session:
        def get_bind(self):
            return type("Bind", (), {"url": "sqlite:///study-cache-test"})()

    result = {"predictions": {"agop_rule": {"value": 1.0, "threshold": 1e6, "predicts_failure": False}}}
    first = study.with_measured_rules(Session(), result)
    study.with_measured_rules(Session(), result)
    assert len(calls) == 1 and first["predictions"]["agop_rule"]["measured"]["status"] == "insufficient"
    study.with_measured_rules(Session(), result, max_age=0.0)
    assert len(calls) == 2
