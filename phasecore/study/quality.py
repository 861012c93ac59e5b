"""Prediction quality: how well the paper's rules and a fitted model predict measured failure (METRICS §8).

Within one stratum (the same dataset, the same profile and outcome settings, the same metrics version: figures
from other settings do not compare) and over the pairs with a decided outcome (§7: ``aligned`` or ``failed``):
the accuracy, AUROC and Brier score of each rule of §5 and of a logistic model on the pair metrics, under
leave-one-model-out cross-validation, with n, the failure base rate and the number of inconclusive pairs left
out; each figure's range when the inconclusive pairs are counted as failed, then as aligned; Spearman's ρ of
each rule's score with ``alignment_score`` over every pair of the stratum; and each rule's cross-validated
threshold. Pairs that share a model are not independent, so the out-of-sample prediction of pair (v, l) comes
from a model fitted without any pair that contains v or l.

Choices:

- Rules have no fitted parameters, so cross-validation leaves their verdicts unchanged: they are scored on
  every pair where they give one. Accuracy compares the verdict with the outcome; the Brier score treats the
  verdict as a 0/1 forecast (so it equals 1 − accuracy; ``brier_form`` says so); AUROC and Spearman's ρ use
  the rule's continuous score (``RULE_SCORES``, oriented so that larger predicts failure: the cross-phase
  rule's value negated, the AGOP rule's on a log10 scale, same ranks), computed from the stored features.
  A useful rule thus has ρ < 0 with ``alignment_score`` (larger = better aligned).
- Cross-validated threshold: in each leave-one-model-out fold, the threshold on the rule's score that
  maximises the training pairs' accuracy (``score > threshold`` predicts failure; candidates are the
  midpoints between adjacent distinct finite sorted scores; among equally accurate ones the middle one),
  scored on the held-out pair; and the threshold chosen the same way on every decided pair.
- Logistic model: ``StandardScaler`` + ``LogisticRegression(C=1)`` on ``FEATURES``. A feature that is None or
  NaN leaves its pair out of the model (counted in ``excluded``); ±inf (an infinite AGOP ratio) is replaced by
  the largest / smallest finite value of that feature, which keeps the ranking. Clipping bounds and scaling
  are fitted on each training fold only (a held-out pair is clipped to its fold's bounds). A held-out pair
  whose training set is empty or has one outcome gets the training base rate (0.5 when empty), counted in
  ``fallback_predictions``.
- Below ``min_labelled`` decided pairs, or without both outcomes, no rate and no probability is returned:
  ``status = "insufficient"`` with the reason.
- ``study_by_stratum`` groups records by ``stratum.key``; records without ``metrics_version == 2`` are left
  out of every stratum and counted (``excluded_version_1``).

Addition of 2026-12-07 (METRICS §8, end):

- Comparators (``comparators``): each of ``COMPARATORS`` as a single-feature predictor, a logistic regression on
  that one feature fitted on the training pairs of each leave-one-model-out fold (so its direction is fitted
  there too), scored like the logistic model; and ``base_rate``, the training folds' failure rate as the
  forecast (no information: its accuracy is the majority rate, its AUROC undefined).
- Intervals (``interval95`` beside each accuracy, AUROC and Brier score of the rules, the logistic model and the
  comparators): a two-way bootstrap over models, ``BOOTSTRAP_DRAWS`` draws from ``default_rng(BOOTSTRAP_SEED)``:
  the vision models and the language models of the decided pairs are resampled with replacement, each pair
  kept with the product of its two models' multiplicities as its weight, and the figure recomputed as a
  weighted figure over the same held-out predictions (the cross-validated forecasts are not refitted per draw:
  the interval is that of the pairs' sampling, not of the fitting). The 2.5 and 97.5 percentiles of the
  draws where the figure is defined (``n_draws``), e.g. an AUROC needs both outcomes among the drawn pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from phasecore import stats
from phasecore.groundtruth.outcome_test import DECIDED, record_outcome
from phasecore.paper import PAPER
from phasecore.study.failure_model import FEATURES, design_matrix, fit_failure_model, fit_or_base_rate

RULES: tuple[str, ...] = ("agop_rule", "combined_rule", "ntk_difference_rule", "cross_phase_rule")
#: the pair metrics scored as single-feature predictors beside the rules (METRICS §8, 2026-12-07)
COMPARATORS: tuple[str, ...] = ("s_ntk_cross_centered", "s_ntk_cross_unbiased", "cka", "mutual_knn")
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0

#: each rule's continuous score from the stored features, larger = failure predicted
RULE_SCORES: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "agop_rule": lambda r: r["log_agop"],
    "combined_rule": lambda r: r["delta_ntk"] * r["log_agop"],
    "ntk_difference_rule": lambda r: r["delta_ntk"],
    "cross_phase_rule": lambda r: -r["s_ntk_cross"],
}
_CLAIMED = {"agop_rule": 0.94, "combined_rule": 0.96, "ntk_difference_rule": None, "cross_phase_rule": None}
#: each rule's accuracy as the paper claims it (None: the paper gives none); a claim, never measured here
CLAIMED_ACCURACY: Mapping[str, float | None] = dict(_CLAIMED)
_CV = (
    "leave-one-model-out: each pair is predicted by a model fitted without every pair that shares "
    "its vision or its language model"
)
#: what each rule's continuous score is, in words (larger predicts failure)
RULE_SCORE_TEXT: dict[str, str] = {
    "agop_rule": "log_agop (log10 of the rule's value)",
    "combined_rule": "delta_ntk × log_agop (the rule's value)",
    "ntk_difference_rule": "delta_ntk (the rule's value)",
    "cross_phase_rule": "−s_ntk_cross (the rule's value, negated: low cross alignment predicts failure)",
}
_BRIER_FORM = "the rule's verdict as a 0/1 forecast (no probability): equals 1 − accuracy"


def prediction_quality(records: Sequence[Mapping[str, Any]], *, min_labelled: int = 20) -> dict[str, Any]:
    """Accuracy, AUROC and Brier score of the paper's rules and of a logistic model within one stratum (§8).

    records: the pairs of ONE stratum (``study_by_stratum`` groups them), one dict per screened pair with
    ``vision``, ``language`` (model references), ``outcome`` ("aligned" | "failed" | "inconclusive"; None = no
    ground truth; without it a bool ``failed`` gives the outcome), ``alignment_score`` (float or None), the
    features of ``FEATURES``, and each rule's verdict either as ``predictions[rule]["predicts_failure"]`` (the
    ``pair_rules`` output) or as a bool under the rule's name.

    Returns a dict with keys ``status`` ("ok" | "insufficient"), ``reason`` (a sentence when insufficient,
    else None), ``n`` (decided pairs), ``n_failed``, ``failure_base_rate``, ``n_inconclusive`` (left out of n),
    ``n_without_ground_truth``, ``n_pairs`` (all records), ``min_labelled``, ``n_models`` ({vision,
    language}, of the decided pairs), ``cv`` (the scheme, in words), ``rules`` ({rule: {n, accuracy, auroc,
    brier, brier_form, claimed_accuracy, source, range_if_inconclusive, spearman_rho, cv_threshold}}),
    ``logistic`` ({n, excluded, fallback_predictions, accuracy, auroc, brier, features,
    range_if_inconclusive}) and ``model_state`` (the model fitted on all decided pairs, for
    ``predict_failure_probability``). ``rules``, ``logistic`` and ``model_state`` are None when insufficient.

    ``range_if_inconclusive`` is ``{as_failed: {n, accuracy, auroc, brier}, as_aligned: {...}}``: the same
    figures with the inconclusive pairs added, counted as failed, then as aligned (the logistic model is
    cross-validated again on those labels). ``spearman_rho`` is ``{rho, p, n, score}`` over every pair with
    both a rule score and an ``alignment_score`` (inconclusive ones included). ``cv_threshold`` is ``{score,
    threshold, training_accuracy, held_out_accuracy, n, no_threshold, fold_thresholds}``.
    """
    outcomes = [record_outcome(r) for r in records]
    decided = [r for r, o in zip(records, outcomes, strict=True) if o in DECIDED]
    inconclusive = [r for r, o in zip(records, outcomes, strict=True) if o == "inconclusive"]
    y = np.array([o == "failed" for o in outcomes if o in DECIDED], dtype=bool)
    n, n_failed, n_inconclusive = len(decided), int(y.sum()), len(inconclusive)
    out: dict[str, Any] = {
        "status": "ok",
        "reason": None,
        "n": n,
        "n_failed": n_failed,
        "failure_base_rate": n_failed / n if n else None,
        "n_inconclusive": n_inconclusive,
        "n_without_ground_truth": len(records) - n - n_inconclusive,
        "n_pairs": len(records),
        "min_labelled": min_labelled,
        "n_models": {
            "vision": len({str(r["vision"]) for r in decided}),
            "language": len({str(r["language"]) for r in decided}),
        },
        "cv": _CV,
        "rules": None,
        "logistic": None,
        "comparators": None,
        "base_rate": None,
        "bootstrap": None,
        "model_state": None,
    }
    reason = _insufficient(n, n_failed, min_labelled, n_inconclusive)
    if reason is not None:
        out.update(status="insufficient", reason=reason)
        return out
    with_inconclusive = [*decided, *inconclusive]
    as_failed = np.concatenate([y, np.ones(n_inconclusive, dtype=bool)])
    as_aligned = np.concatenate([y, np.zeros(n_inconclusive, dtype=bool)])
    # single-threaded BLAS: one small fit per pair, where threads only add contention
    with threadpool_limits(limits=1, user_api="blas"):
        rules = {}
        for rule in RULES:
            figures = _score_rule(rule, decided, y)
            if n_inconclusive:
                ranges = {
                    "as_failed": _figures(_score_rule(rule, with_inconclusive, as_failed)),
                    "as_aligned": _figures(_score_rule(rule, with_inconclusive, as_aligned)),
                }
            else:
                ranges = {"as_failed": _figures(figures), "as_aligned": _figures(figures)}
            rules[rule] = {
                **figures,
                "range_if_inconclusive": ranges,
                "spearman_rho": _spearman(rule, records),
                "cv_threshold": _cv_threshold(rule, decided, y),
            }
        logistic = _cross_validate_logistic(decided, y)
        if n_inconclusive:
            ranges = {
                "as_failed": _figures(_cross_validate_logistic(with_inconclusive, as_failed)),
                "as_aligned": _figures(_cross_validate_logistic(with_inconclusive, as_aligned)),
            }
        else:
            ranges = {"as_failed": _figures(logistic), "as_aligned": _figures(logistic)}
        comparators = {name: _cross_validate_logistic(decided, y, features=(name,)) for name in COMPARATORS}
        base_rate = _cross_validate_base_rate(decided, y)
        _add_intervals(decided, y, rules, logistic, comparators, base_rate)
        out["rules"] = rules
        out["logistic"] = {**logistic, "range_if_inconclusive": ranges}
        out["comparators"] = comparators
        out["base_rate"] = base_rate
        out["bootstrap"] = {
            "draws": BOOTSTRAP_DRAWS,
            "seed": BOOTSTRAP_SEED,
            "scheme": "two-way over models: vision and language models resampled with replacement, pairs "
            "weighted by the product of their models' multiplicities; held-out predictions fixed",
        }
        out["model_state"] = fit_failure_model(decided)
    return out


def _insufficient(n: int, n_failed: int, min_labelled: int, n_inconclusive: int = 0) -> str | None:
    left_out = f" ({n_inconclusive} inconclusive left out)" if n_inconclusive else ""
    if n < min_labelled:
        return (
            f"only {n} labelled pair{'s' if n != 1 else ''} with a decided outcome{left_out}; measured "
            f"prediction quality needs at least {min_labelled} with both outcomes, so no rate or probability "
            "is reported yet"
        )
    if n_failed in (0, n):
        outcome = "failed" if n_failed else "aligned"
        return (
            f"all {n} decided labelled pairs {outcome}{left_out}; accuracy, AUROC and probabilities need pairs "
            "of both outcomes"
        )
    return None


def _figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    return {key: figures[key] for key in ("n", "accuracy", "auroc", "brier")}


def _score_rule(rule: str, records: Sequence[Mapping[str, Any]], outcomes: np.ndarray) -> dict[str, Any]:
    verdicts = [_verdict(r, rule) for r in records]
    given = np.array([v is not None for v in verdicts])
    correct = np.array([v == o for v, o in zip(verdicts, outcomes, strict=True) if v is not None])
    accuracy = float(correct.mean()) if correct.size else None
    scores = np.array([_rule_score(rule, r) for r in records])
    usable = ~np.isnan(scores)
    auroc = stats.auroc(outcomes[usable], stats.finite_ranks(scores[usable]))
    return {
        "n": int(given.sum()),
        "accuracy": accuracy,
        "auroc": auroc,
        "brier": None if accuracy is None else 1.0 - accuracy,
        "brier_form": _BRIER_FORM,
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


def rule_correlations(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each rule's Spearman ρ with ``alignment_score`` over the records that have both, inconclusive pairs
    included (METRICS §8): ``{rule: {rho, p, n, score}}``. Defined whatever the decided pairs, so a stratum
    whose study is still insufficient can say how its rules track the measured alignment."""
    return {rule: _spearman(rule, records) for rule in RULES}


def _spearman(rule: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Spearman's ρ of the rule's score with ``alignment_score`` over every record that has both."""
    scores, alignment = [], []
    for record in records:
        score, value = _rule_score(rule, record), record.get("alignment_score")
        if math.isnan(score) or value is None or not math.isfinite(float(value)):
            continue
        scores.append(score)
        alignment.append(float(value))
    out: dict[str, Any] = {"rho": None, "p": None, "n": len(scores), "score": RULE_SCORE_TEXT[rule]}
    if len(scores) < 3:
        return out
    ranked, measured = stats.finite_ranks(np.array(scores)), np.array(alignment)
    if np.ptp(ranked) == 0 or np.ptp(measured) == 0:  # a constant input: ρ is undefined
        return out
    result = spearmanr(ranked, measured)
    rho, p = float(result.statistic), float(result.pvalue)
    if math.isfinite(rho):
        out.update(rho=rho, p=p if math.isfinite(p) else None)
    return out


def _best_threshold(scores: np.ndarray, failed: np.ndarray) -> tuple[float, float] | None:
    """(threshold, training accuracy): the midpoint between adjacent distinct finite sorted scores that
    maximises the accuracy of ``score > threshold`` ⇒ failure (the middle one of equally good ones)."""
    if scores.size < 2:
        return None
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], failed[order].astype(np.int64)
    # split after position k (k = 1 … n−1): the first k predicted aligned, the rest failed
    correct = np.cumsum(1 - y)[:-1] + (y.sum() - np.cumsum(y)[:-1])
    valid = (s[:-1] < s[1:]) & np.isfinite(s[:-1]) & np.isfinite(s[1:])
    if not valid.any():
        return None
    best = correct[valid].max()
    candidates = np.flatnonzero(valid & (correct == best))
    k = int(candidates[len(candidates) // 2])
    return float((s[k] + s[k + 1]) / 2.0), float(best / s.size)


def _cv_threshold(rule: str, records: Sequence[Mapping[str, Any]], outcomes: np.ndarray) -> dict[str, Any]:
    """The rule's threshold chosen on the training pairs of each leave-one-model-out fold, scored on the
    held-out pair; and the one chosen on every decided pair."""
    scores = np.array([_rule_score(rule, r) for r in records])
    usable = ~np.isnan(scores)
    s, y = scores[usable], outcomes[usable].astype(bool)
    vision = np.array([str(r["vision"]) for r, u in zip(records, usable, strict=True) if u])
    language = np.array([str(r["language"]) for r, u in zip(records, usable, strict=True) if u])
    held_out, thresholds, no_threshold = [], [], 0
    for i in range(s.size):
        train = (vision != vision[i]) & (language != language[i])
        chosen = _best_threshold(s[train], y[train])
        if chosen is None:
            no_threshold += 1
            continue
        thresholds.append(chosen[0])
        held_out.append(bool(s[i] > chosen[0]) == bool(y[i]))
    overall = _best_threshold(s, y)
    return {
        "score": RULE_SCORE_TEXT[rule],
        "threshold": None if overall is None else overall[0],
        "training_accuracy": None if overall is None else overall[1],
        "held_out_accuracy": float(np.mean(held_out)) if held_out else None,
        "n": len(held_out),
        "no_threshold": no_threshold,
        "fold_thresholds": (
            {
                "min": float(np.min(thresholds)),
                "median": float(np.median(thresholds)),
                "max": float(np.max(thresholds)),
            }
            if thresholds
            else None
        ),
    }


def _logistic_cv_probabilities(
    records: Sequence[Mapping[str, Any]], outcomes: np.ndarray, features: Sequence[str] = FEATURES
) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """(held-out P(failed), 0/1 outcomes, kept record indices, fallback count) under leave-one-model-out CV.
    Clipping bounds and scaling come from each training fold only."""
    X, y, keep = design_matrix(records, outcomes, features)
    vision = np.array([str(records[i]["vision"]) for i in keep])
    language = np.array([str(records[i]["language"]) for i in keep])
    probabilities = np.zeros(y.size)
    fallback = 0
    fits: dict[tuple[str, str], tuple[Callable[[np.ndarray], np.ndarray], bool]] = {}
    for i in range(y.size):
        key = (vision[i], language[i])
        if key not in fits:
            train = (vision != key[0]) & (language != key[1])
            fits[key] = fit_or_base_rate(X[train], y[train])
        predict, is_fallback = fits[key]
        fallback += int(is_fallback)
        probabilities[i] = predict(X[i : i + 1])[0]
    return probabilities, y, keep, fallback


def _cross_validate_logistic(
    records: Sequence[Mapping[str, Any]], outcomes: np.ndarray, *, features: Sequence[str] = FEATURES
) -> dict[str, Any]:
    probabilities, y, keep, fallback = _logistic_cv_probabilities(records, outcomes, features)
    return {
        "n": int(y.size),
        "excluded": len(records) - int(y.size),
        "fallback_predictions": fallback,
        "accuracy": float(np.mean((probabilities >= 0.5) == y)) if y.size else None,
        "auroc": stats.auroc(y.astype(bool), probabilities),
        "brier": float(np.mean((probabilities - y) ** 2)) if y.size else None,
        "features": list(features),
        "_held_out": (keep, probabilities),
    }


def _cross_validate_base_rate(records: Sequence[Mapping[str, Any]], outcomes: np.ndarray) -> dict[str, Any]:
    """The no-information forecast: each held-out pair gets its training fold's failure rate."""
    vision = np.array([str(r["vision"]) for r in records])
    language = np.array([str(r["language"]) for r in records])
    y = outcomes.astype(np.float64)
    rates = np.empty(y.size)
    for i in range(y.size):
        train = (vision != vision[i]) & (language != language[i])
        rates[i] = y[train].mean() if train.any() else 0.5
    return {
        "n": int(y.size),
        "accuracy": float(np.mean((rates >= 0.5) == outcomes)) if y.size else None,
        "auroc": None,
        "brier": float(np.mean((rates - y) ** 2)) if y.size else None,
        "forecast": "the training fold's failure rate",
        "_held_out": (list(range(y.size)), rates),
    }


def _add_intervals(
    records: Sequence[Mapping[str, Any]],
    outcomes: np.ndarray,
    rules: dict[str, dict[str, Any]],
    logistic: dict[str, Any],
    comparators: dict[str, dict[str, Any]],
    base_rate: dict[str, Any],
) -> None:
    """``interval95`` ({accuracy, auroc, brier, n_draws}) on every figure set, by the two-way bootstrap over
    models (module docstring); the private ``_held_out`` predictions are dropped afterwards."""
    vision = [str(r["vision"]) for r in records]
    language = [str(r["language"]) for r in records]
    v_names, v_index = np.unique(vision, return_inverse=True)
    l_names, l_index = np.unique(language, return_inverse=True)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    weights = np.empty((BOOTSTRAP_DRAWS, len(records)))
    for b in range(BOOTSTRAP_DRAWS):
        v_count = np.bincount(rng.integers(0, v_names.size, v_names.size), minlength=v_names.size)
        l_count = np.bincount(rng.integers(0, l_names.size, l_names.size), minlength=l_names.size)
        weights[b] = v_count[v_index] * l_count[l_index]
    y = outcomes.astype(bool)
    for rule, figures in rules.items():
        verdicts = [_verdict(r, rule) for r in records]
        has = np.array([v is not None for v in verdicts])
        correct = np.array([v == o if v is not None else False for v, o in zip(verdicts, y, strict=True)])
        scores = stats.finite_ranks(np.array([_rule_score(rule, r) for r in records]))
        figures["interval95"] = _bootstrap(weights, y, has, correct, ~np.isnan(scores), scores, None)
    for figures in (logistic, *comparators.values(), base_rate):
        keep, forecast = figures.pop("_held_out")
        mask = np.zeros(len(records), dtype=bool)
        mask[keep] = True
        p = np.full(len(records), np.nan)
        p[keep] = forecast
        correct = np.where(mask, (p >= 0.5) == y, False)
        figures["interval95"] = _bootstrap(
            weights, y, mask, correct, mask if figures.get("auroc") is not None else np.zeros_like(mask), p, p
        )


def _bootstrap(
    weights: np.ndarray,
    y: np.ndarray,
    has_verdict: np.ndarray,
    correct: np.ndarray,
    has_score: np.ndarray,
    scores: np.ndarray,
    probabilities: np.ndarray | None,
) -> dict[str, Any]:
    """Percentile intervals of the weighted accuracy, AUROC and Brier score over the bootstrap ``weights``
    (draws × pairs), all draws at once. Without ``probabilities`` the Brier score is 1 − accuracy (a 0/1
    forecast). The weighted AUROC is ``Σ w_i w_j [s_i > s_j] (+ ½ on ties) / (W_failed W_aligned)`` over failed i
    and aligned j."""
    wv = weights * has_verdict
    total = wv.sum(axis=1)
    defined = total > 0
    accuracy = (wv @ correct.astype(np.float64))[defined] / total[defined]
    if probabilities is None:
        brier = 1.0 - accuracy
    else:
        squared = np.where(has_verdict, (np.nan_to_num(probabilities) - y) ** 2, 0.0)
        brier = (wv @ squared)[defined] / total[defined]
    positive, negative = has_score & y, has_score & ~y
    auroc = np.array([])
    if positive.any() and negative.any():
        s_pos, s_neg = scores[positive], scores[negative]
        wins = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
        w_pos, w_neg = weights[:, positive], weights[:, negative]
        norm = w_pos.sum(axis=1) * w_neg.sum(axis=1)
        ok = norm > 0
        auroc = np.einsum("bi,ij,bj->b", w_pos[ok], wins, w_neg[ok]) / norm[ok]

    def interval(values: np.ndarray) -> list[float] | None:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values.size else None

    return {
        "accuracy": interval(accuracy),
        "auroc": interval(auroc),
        "brier": interval(brier),
        "n_draws": {"accuracy": int(accuracy.size), "auroc": int(auroc.size)},
    }


