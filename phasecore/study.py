"""Prediction quality: how well the paper's rules and a fitted model predict measured failure (METRICS §8).

Over every stored pair with ground truth (§7, ``failed``): the accuracy, AUROC and Brier score of each rule of
§5 and of a logistic model on the pair metrics, under leave-one-model-out cross-validation, with n and the
failure base rate. Pairs that share a model are not independent, so the out-of-sample prediction of pair
(v, l) comes from a model fitted without any pair that contains v or l.

Choices:

- Rules have no fitted parameters, so cross-validation leaves them unchanged: their verdicts are scored on
  every pair where they give one. Accuracy compares the verdict with ``failed``; the Brier score treats the
  verdict as a 0/1 probability (so it equals 1 − accuracy); AUROC ranks pairs by the rule's continuous score
  (``RULE_SCORES``, oriented so that larger predicts failure), computed from the stored features.
- Logistic model: ``StandardScaler`` + ``LogisticRegression(C=1)`` on ``FEATURES``. A feature that is None or
  NaN leaves its pair out of the model (counted in ``excluded``); ±inf (an infinite AGOP ratio) is replaced by
  the largest / smallest finite value of that feature, which keeps the ranking. A held-out pair whose training
  set is empty or has one outcome gets the training base rate (0.5 when empty), counted in
  ``fallback_predictions``.
- Below ``min_labelled`` labelled pairs, or without both outcomes, no rate and no probability is returned:
  ``status = "insufficient"`` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from phasecore.rules import PAPER

FEATURES: tuple[str, ...] = (
    "s_ntk_cross",
    "s_ntk_cross_centered",
    "delta_ntk",
    "log_agop",
    "cka",
    "mutual_knn",
)
RULES: tuple[str, ...] = ("agop_rule", "combined_rule", "ntk_difference_rule", "cross_phase_rule")

#: each rule's continuous score from the stored features, larger = failure predicted
RULE_SCORES: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "agop_rule": lambda r: r["log_agop"],
    "combined_rule": lambda r: r["delta_ntk"] * r["log_agop"],
    "ntk_difference_rule": lambda r: r["delta_ntk"],
    "cross_phase_rule": lambda r: -r["s_ntk_cross"],
}
_CLAIMED = {"agop_rule": 0.94, "combined_rule": 0.96, "ntk_difference_rule": None, "cross_phase_rule": None}
_CV = (
    "leave-one-model-out: each pair is predicted by a model fitted without every pair that shares "
    "its vision or its language model"
)
_STATE_VERSION = 1


def prediction_quality(records: Sequence[Mapping[str, Any]], *, min_labelled: int = 20) -> dict[str, Any]:
    """Accuracy, AUROC and Brier score of the paper's rules and of a logistic model (METRICS §8).

    records: one dict per screened pair with ``vision``, ``language`` (model references), ``failed`` (bool
    ground truth; None = not labelled, skipped), the features of ``FEATURES``, and each rule's verdict either
    as ``predictions[rule]["predicts_failure"]`` (the ``pair_rules`` output) or as a bool under the rule's
    name.

    Returns a dict with keys ``status`` ("ok" | "insufficient"), ``reason`` (a sentence when insufficient,
    else None), ``n`` (labelled pairs), ``n_failed``, ``failure_base_rate``, ``min_labelled``, ``n_models``
    ({vision, language}), ``cv`` (the scheme, in words), ``rules`` ({rule: {n, accuracy, auroc, brier,
    claimed_accuracy, source}}), ``logistic`` ({n, excluded, fallback_predictions, accuracy, auroc, brier,
    features}) and ``model_state`` (the model fitted on all pairs, for ``predict_failure_probability``).
    ``rules``, ``logistic`` and ``model_state`` are None when insufficient.
    """
    labelled = [r for r in records if r.get("failed") is not None]
    outcomes = np.array([bool(r["failed"]) for r in labelled], dtype=bool)
    n, n_failed = len(labelled), int(outcomes.sum())
    out: dict[str, Any] = {
        "status": "ok",
        "reason": None,
        "n": n,
        "n_failed": n_failed,
        "failure_base_rate": n_failed / n if n else None,
        "min_labelled": min_labelled,
        "n_models": {
            "vision": len({str(r["vision"]) for r in labelled}),
            "language": len({str(r["language"]) for r in labelled}),
        },
        "cv": _CV,
        "rules": None,
        "logistic": None,
        "model_state": None,
    }
    reason = _insufficient(n, n_failed, min_labelled)
    if reason is not None:
        out.update(status="insufficient", reason=reason)
        return out
    # single-threaded BLAS: one small fit per pair, where threads only add contention
    with threadpool_limits(limits=1, user_api="blas"):
        out["rules"] = {rule: _score_rule(rule, labelled, outcomes) for rule in RULES}
        out["logistic"] = _cross_validate_logistic(labelled)
        out["model_state"] = fit_failure_model(labelled)
    return out


def measured_rules(quality: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each rule's measured figures from a ``prediction_quality`` result, in the form a screening result
    carries next to the paper's claim: ``{status, reason, n_labelled, failure_base_rate, n, accuracy, auroc,
    brier}``. ``status`` is "insufficient" (with the reason, and null figures) until enough labelled pairs
    with both outcomes exist (METRICS §8)."""
    common = {"n_labelled": quality["n"], "failure_base_rate": quality["failure_base_rate"]}
    if quality["status"] != "ok" or not quality.get("rules"):
        empty = {"n": 0, "accuracy": None, "auroc": None, "brier": None}
        return {rule: {"status": "insufficient", "reason": quality["reason"], **common, **empty} for rule in RULES}
    return {
        rule: {
            "status": "ok",
            "reason": None,
            **common,
            **{key: quality["rules"][rule][key] for key in ("n", "accuracy", "auroc", "brier")},
        }
        for rule in RULES
    }


def attach_measured(result: Mapping[str, Any], quality: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``result`` whose ``predictions[rule]["measured"]`` holds the rule's measured figures
    over the stored pairs (a snapshot taken when the result was made; ``/v1/study`` has the live ones)."""
    measured = measured_rules(quality)
    predictions = {
        rule: {**prediction, "measured": measured.get(rule)}
        for rule, prediction in (result.get("predictions") or {}).items()
    }
    return {**result, "predictions": predictions}


def fit_failure_model(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Fit the logistic failure model on every labelled record with usable features.

    Returns a JSON-able state with keys ``kind`` ("logistic"), ``version``, ``features``, ``mean``, ``scale``,
    ``coef``, ``intercept``, ``clip_min``, ``clip_max``, ``n``, ``failure_base_rate``; None when the usable
    records do not hold both outcomes.
    """
    X, y, _ = _design_matrix([r for r in records if r.get("failed") is not None])
    if y.size == 0 or y.min() == y.max():
        return None
    finite_min, finite_max = _finite_extremes(X)
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


def _insufficient(n: int, n_failed: int, min_labelled: int) -> str | None:
    if n < min_labelled:
        return (
            f"only {n} labelled pair{'s' if n != 1 else ''}; measured prediction quality needs at least "
            f"{min_labelled} with both outcomes, so no rate or probability is reported yet"
        )
    if n_failed in (0, n):
        outcome = "failed" if n_failed else "aligned"
        return f"all {n} labelled pairs {outcome}; accuracy, AUROC and probabilities need pairs of both outcomes"
    return None


def _score_rule(rule: str, records: Sequence[Mapping[str, Any]], outcomes: np.ndarray) -> dict[str, Any]:
    verdicts = [_verdict(r, rule) for r in records]
    given = np.array([v is not None for v in verdicts])
    correct = np.array([v == o for v, o in zip(verdicts, outcomes, strict=True) if v is not None])
    accuracy = float(correct.mean()) if correct.size else None
    scores = np.array([_rule_score(rule, r) for r in records])
    usable = ~np.isnan(scores)
    auroc = _auroc(outcomes[usable], _finite_ranks(scores[usable]))
    return {
        "n": int(given.sum()),
        "accuracy": accuracy,
        "auroc": auroc,
        "brier": None if accuracy is None else 1.0 - accuracy,
        "claimed_accuracy": _CLAIMED[rule],
        "source": f"claimed accuracy: paper claim ({PAPER['title']}); accuracy, AUROC, Brier: measured here",
    }


def _verdict(record: Mapping[str, Any], rule: str) -> bool | None:
    nested = record.get("predictions")
    if isinstance(nested, Mapping) and isinstance(nested.get(rule), Mapping):
        value = nested[rule].get("predicts_failure")
    else:
        value = record.get(rule)
    return None if value is None else bool(value)


def _rule_score(rule: str, record: Mapping[str, Any]) -> float:
    try:
        value = RULE_SCORES[rule](record)
    except (KeyError, TypeError):
        return math.nan
    return math.nan if value is None else float(value)


def _cross_validate_logistic(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    X, y, keep = _design_matrix(records)
    finite_min, finite_max = _finite_extremes(X)
    X = np.clip(X, finite_min, finite_max)
    vision = np.array([str(records[i]["vision"]) for i in keep])
    language = np.array([str(records[i]["language"]) for i in keep])
    probabilities = np.zeros(y.size)
    fallback = 0
    fits: dict[tuple[str, str], tuple[Callable[[np.ndarray], np.ndarray], bool]] = {}
    for i in range(y.size):
        key = (vision[i], language[i])
        if key not in fits:
            train = (vision != key[0]) & (language != key[1])
            fits[key] = _fit_or_base_rate(X[train], y[train])
        predict, is_fallback = fits[key]
        fallback += int(is_fallback)
        probabilities[i] = predict(X[i : i + 1])[0]
    return {
        "n": int(y.size),
        "excluded": len(records) - int(y.size),
        "fallback_predictions": fallback,
        "accuracy": float(np.mean((probabilities >= 0.5) == y)) if y.size else None,
        "auroc": _auroc(y.astype(bool), probabilities),
        "brier": float(np.mean((probabilities - y) ** 2)) if y.size else None,
        "features": list(FEATURES),
    }


def _fit_or_base_rate(X: np.ndarray, y: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """(predict, is_fallback): the fitted P(failed), or the constant training base rate."""
    if y.size == 0 or y.min() == y.max():
        rate = float(y.mean()) if y.size else 0.5
        return (lambda Z: np.full(len(Z), rate)), True
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(X), y)
    return (lambda Z: model.predict_proba(scaler.transform(Z))[:, 1]), False


def _design_matrix(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(n, 6) features, (n,) 0/1 outcomes, kept record indices; rows with a None/NaN feature dropped."""
    rows, outcomes, keep = [], [], []
    for i, record in enumerate(records):
        values = [math.nan if record.get(name) is None else float(record[name]) for name in FEATURES]
        if any(math.isnan(v) for v in values):
            continue
        rows.append(values)
        outcomes.append(int(bool(record["failed"])))
        keep.append(i)
    X = np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))
    return X, np.array(outcomes, dtype=np.int64), keep


def _finite_extremes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.where(np.isfinite(X), X, np.nan)
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(finite, axis=0, initial=np.inf), np.nanmax(finite, axis=0, initial=-np.inf)
    # a column with no finite value at all cannot be clipped into a range: use 0
    return np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)


def _finite_ranks(scores: np.ndarray) -> np.ndarray:
    """Replace ±inf by values beyond the finite range, keeping the order (for AUROC)."""
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.where(np.isposinf(scores), hi + 1.0, np.where(np.isneginf(scores), lo - 1.0, scores))


def _auroc(outcomes: np.ndarray, scores: np.ndarray) -> float | None:
    if outcomes.size == 0 or outcomes.min() == outcomes.max():
        return None
    return float(roc_auc_score(outcomes, scores))
