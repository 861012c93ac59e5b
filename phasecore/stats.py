"""Statistics shared by the engine: proportions (Wilson intervals, binomial and Poisson-binomial tails, the
Kish design effect of clustered outcomes) and ranking (AUROC with infinite scores kept in order)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc
from sklearn.metrics import roc_auc_score


def wilson_interval(accuracy: float, n: float, z: float = 1.959963984540054) -> list[float]:
    """95% Wilson score interval of a proportion observed on n (possibly effective, non-integer) trials."""
    centre = (accuracy + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def binomial_sf(k: float, n: float, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), continued to real k and n through the regularised beta function."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(betainc(k, n - k + 1, p))


def poisson_binomial_sf(k: int, probs: np.ndarray) -> float:
    """P(X ≥ k) for X a sum of independent Bernoulli(p_i), by dynamic programming over the pmf."""
    pmf = np.zeros(probs.size + 1)
    pmf[0] = 1.0
    for i, p in enumerate(probs, start=1):
        pmf[1 : i + 1] = pmf[1 : i + 1] * (1 - p) + pmf[:i] * p
        pmf[0] *= 1 - p
    return float(pmf[k:].sum())


def design_effect(outcomes: np.ndarray, classes: np.ndarray) -> float:
    """Kish design effect ``1 + (m₀ − 1) ρ`` of (n,) outcomes clustered by (n,) class ids."""
    ids, inverse, sizes = np.unique(classes, return_inverse=True, return_counts=True)
    n, k = outcomes.size, ids.size
    if k < 2 or k == n:
        return 1.0
    means = np.bincount(inverse, weights=outcomes) / sizes
    between = float(np.sum(sizes * (means - outcomes.mean()) ** 2) / (k - 1))
    within = float(np.sum((outcomes - means[inverse]) ** 2) / (n - k))
    m0 = (n - float(np.sum(sizes**2)) / n) / (k - 1)
    denom = between + (m0 - 1) * within
    rho = 1.0 if denom <= 0 else float(np.clip((between - within) / denom, 0.0, 1.0))
    return 1.0 + (m0 - 1) * rho


def finite_ranks(scores: np.ndarray) -> np.ndarray:
    """Replace ±inf by values beyond the finite range, keeping the order (for AUROC)."""
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.where(np.isposinf(scores), hi + 1.0, np.where(np.isneginf(scores), lo - 1.0, scores))


def auroc(outcomes: np.ndarray, scores: np.ndarray) -> float | None:
    if outcomes.size == 0 or outcomes.min() == outcomes.max():
        return None
    return float(roc_auc_score(outcomes, scores))
