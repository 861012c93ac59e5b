"""The logistic failure model (METRICS §8): P(failed) of a pair from its pair metrics, fitted on the decided pairs
of one stratum; ``±inf`` features are clipped to the training range, and a fit on one outcome falls back to the
base rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from phasecore.groundtruth.outcome_test import DECIDED, record_outcome

FEATURES: tuple[str, ...] = (
    "s_ntk_cross",
    "s_ntk_cross_centered",
    "delta_ntk",
    "log_agop",
    "cka",
    "mutual_knn",
)
_STATE_VERSION = 1


def fit_failure_model(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Fit the logistic failure model on every record with a decided outcome (``record_outcome``: aligned or
    failed) and usable features.

    Returns a JSON-able state with keys ``kind`` ("logistic"), ``version``, ``features``, ``mean``, ``scale``,
    ``coef``, ``intercept``, ``clip_min``, ``clip_max``, ``n``, ``failure_base_rate``; None when the usable
    records do not hold both outcomes.
    """
    decided = [r for r in records if record_outcome(r) in DECIDED]
    X, y, _ = design_matrix(decided, np.array([record_outcome(r) == "failed" for r in decided], dtype=bool))
    if y.size == 0 or y.min() == y.max():
        return None
    finite_min, finite_max = finite_extremes(X)
    X = np.clip(X, finite_min, finite_max)
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(X), y)
    return {
        "kind": "logistic",
        "version": _STATE_VERSION,
        "features": list(FEATURES),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
        "clip_min": finite_min.tolist(),
        "clip_max": finite_max.tolist(),
        "n": int(y.size),
        "failure_base_rate": float(y.mean()),
    }


def predict_failure_probability(model_state: Mapping[str, Any], features: Mapping[str, Any]) -> float:
    """P(failed) of one pair from a state of ``fit_failure_model`` and the pair's ``FEATURES``.

    ±inf features are clipped to the training range (as in fitting); a missing or NaN feature raises
    ValueError naming it.
    """
    if model_state.get("kind") != "logistic" or model_state.get("version") != _STATE_VERSION:
        raise ValueError(f"not a logistic failure-model state of version {_STATE_VERSION}")
    names = model_state["features"]
    values = []
    for name in names:
        value = features.get(name)
        if value is None or math.isnan(float(value)):
            raise ValueError(f"feature {name!r} is missing or NaN; the failure model needs {', '.join(names)}")
        values.append(float(value))
    x = np.clip(np.array(values), model_state["clip_min"], model_state["clip_max"])
    z = (x - np.array(model_state["mean"])) / np.array(model_state["scale"])
    logit = float(z @ np.array(model_state["coef"]) + model_state["intercept"])
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


def fit_or_base_rate(X: np.ndarray, y: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """(predict, is_fallback): the fitted P(failed), or the constant training base rate. The ±inf clipping
    bounds and the scaler are fitted on ``X`` (the training fold) and applied to what is predicted."""
    if y.size == 0 or y.min() == y.max():
        rate = float(y.mean()) if y.size else 0.5
        return (lambda Z: np.full(len(Z), rate)), True
    lo, hi = finite_extremes(X)
    scaler = StandardScaler().fit(np.clip(X, lo, hi))
    model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(np.clip(X, lo, hi)), y)
    return (lambda Z: model.predict_proba(scaler.transform(np.clip(Z, lo, hi)))[:, 1]), False


def design_matrix(
    records: Sequence[Mapping[str, Any]], outcomes: np.ndarray, features: Sequence[str] = FEATURES
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(n, F) features, (n,) 0/1 outcomes, kept record indices; rows with a None/NaN feature dropped."""
    rows, kept_outcomes, keep = [], [], []
    for i, record in enumerate(records):
        values = [math.nan if record.get(name) is None else float(record[name]) for name in features]
        if any(math.isnan(v) for v in values):
            continue
        rows.append(values)
        kept_outcomes.append(int(bool(outcomes[i])))
        keep.append(i)
    X = np.array(rows, dtype=np.float64).reshape(-1, len(features))
    return X, np.array(kept_outcomes, dtype=np.int64), keep


def finite_extremes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.where(np.isfinite(X), X, np.nan)
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(finite, axis=0, initial=np.inf), np.nanmax(finite, axis=0, initial=-np.inf)
    # a column with no finite value at all cannot be clipped into a range: use 0
    return np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)
