"""Synthetic study records with a known answer (tests/phasecore/study/test_study.py, METRICS §8), for the
study, evidence and evidence-page tests.

The outcome of every synthetic pair comes from a hidden failure propensity ``h`` (plus model effects, so that
pairs sharing a model are alike); the rules' inputs are separate noisy functions of ``h``, or pure noise. No
label is computed from a rule's own input.
"""

import math

import numpy as np

STRATUM_A = {"key": "a" * 64, "dataset": "digits", "metrics_version": 2, "settings": {"n": 64, "seed": 0}}
STRATUM_B = {"key": "b" * 64, "dataset": "digits", "metrics_version": 2, "settings": {"n": 128, "seed": 0}}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def rule_predictions(delta: float | None, log_agop: float | None, cross: float | None) -> dict:
    def rule(value, threshold, above):
        verdict = None if value is None else (value > threshold if above else value < threshold)
        return {"value": value, "threshold": threshold, "predicts_failure": verdict}

    combined = None if delta is None or log_agop is None else delta * log_agop
    return {
        "agop_rule": rule(None if log_agop is None else 10**log_agop, 1e6, True),
        "combined_rule": rule(combined, 2.5, True),
        "ntk_difference_rule": rule(delta, 0.5, True),
        "cross_phase_rule": rule(cross, 0.5, False),
    }


def hidden_records(
    vision: int = 6,
    language: int = 6,
    *,
    seed: int = 0,
    noise: float = 0.5,
    margin: float = 0.0,
    stratum: dict | None = STRATUM_A,
    version: int | None = 2,
) -> list[dict]:
    """A vision × language grid. Hidden propensity h = model effects + pair noise; alignment_score = −h plus a
    little measurement noise; outcome failed when alignment_score < 0, inconclusive when |score| < margin.
    ΔNTK and S_cross are noisy functions of h (informative); log(AGOP), CKA, mutual kNN and the centered
    cross alignment are pure noise."""
    rng = np.random.default_rng(seed)
    effect_v, effect_l = rng.normal(0, 1, vision), rng.normal(0, 1, language)
    records = []
    for i in range(vision):
        for j in range(language):
            h = effect_v[i] + effect_l[j] + rng.normal(0, 0.7)
            score = -h + rng.normal(0, 0.05)
            outcome = "inconclusive" if abs(score) < margin else ("failed" if score < 0 else "aligned")
            delta = _sigmoid(h + rng.normal(0, noise))
            cross = _sigmoid(-h + rng.normal(0, noise))
            log_agop = float(rng.uniform(2, 9))
            record = {
                "vision": f"timm:v{i}",
                "language": f"hf:l{j}",
                "outcome": outcome,
                "failed": None if outcome == "inconclusive" else outcome == "failed",
                "alignment_score": score,
                "s_ntk_cross": cross,
                "s_ntk_cross_centered": float(rng.uniform(0, 1)),
                "delta_ntk": delta,
                "log_agop": log_agop,
                "cka": float(rng.uniform(0, 1)),
                "mutual_knn": float(rng.uniform(0, 0.3)),
                "predictions": rule_predictions(delta, log_agop, cross),
                "stratum": stratum,
            }
            if version is not None:
                record["metrics_version"] = version
            records.append(record)
    return records
