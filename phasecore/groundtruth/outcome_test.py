"""The outcome test of §7: per-group scores s_g in, a three-way outcome out.

Outcome, three-way (METRICS v2 §7, binding): the seed splits the C classes into ``G = ⌊C/2⌋`` class-disjoint
groups of two (one of three when C is odd); for each group g the map is fitted on the other classes and g's
held-out images are classified among g's classes. ``b_g`` = mean over c ∈ g of the fraction of c's held-out
images predicted as c, ``s_g = (b_g − 1/|g|) / (1 − 1/|g|)`` and ``alignment_score = mean_g s_g``. It is
tested against ``τ = failure_threshold`` by a sign-flip test over the groups (``sign_flip_test``): with
``D = mean_g(s_g − τ)``, ``p_above = P_ε[mean_g ε_g(s_g − τ) ≥ D]`` and
``p_below = P_ε[mean_g ε_g(s_g − τ) ≤ D]`` over all ``2^G`` sign vectors ε (G ≤ 16), or over 9,999 seeded
draws plus the identity (G > 16). ``aligned`` when ``p_above ≤ α``, ``failed`` when ``p_below ≤ α``,
``inconclusive`` otherwise (α = ``outcome_alpha``); ``failed`` is True / False for a decided pair and None when
inconclusive. The smallest attainable p-value is ``1/2^G``, so with ``G < 5`` (C < 10) no outcome can reach
α = 0.05 and the pair is inconclusive for "too few classes" whatever its scores (``decide_outcome``).

Choice made here:

- Ties in the sign-flip test (sign vectors whose statistic equals D up to ``1e-9 · (1 + max_g |s_g − τ|)``)
  count towards both p-values, i.e. in favour of the null. The Monte-Carlo draws (G > 16) come from
  ``default_rng(seed)``; the identity is always counted, so every p-value lies in ``[1/2^G, 1]`` (exact) or
  ``[1/10,000, 1]`` (Monte-Carlo). ``α`` must lie in (0, 0.5), where ``p_above + p_below ≥ 1`` keeps
  ``aligned`` and ``failed`` exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasecore.errors import InvalidSettings

#: sign-flip test: exact enumeration of all 2^G sign vectors up to this many groups, Monte-Carlo above
SIGN_FLIP_EXACT_MAX_GROUPS = 16
#: Monte-Carlo sign vectors drawn (the identity is added to them) when G > SIGN_FLIP_EXACT_MAX_GROUPS
SIGN_FLIP_DRAWS = 9999
OUTCOMES: tuple[str, ...] = ("aligned", "failed", "inconclusive")
DECIDED: tuple[str, ...] = ("aligned", "failed")


def outcome_groups(classes: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The §7 groups: the C classes shuffled by ``rng`` and cut into ``G = ⌊C/2⌋`` class-disjoint groups,
    all of two classes except the first, of three, when C is odd (``np.array_split`` of the permutation)."""
    classes = np.asarray(classes)
    if classes.size < 2:
        raise ValueError(f"the §7 groups need ≥ 2 classes, got {classes.size}")
    return list(np.array_split(rng.permutation(classes), classes.size // 2))


def group_score(classes: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """b_g = mean over c ∈ g of the fraction of c's held-out images predicted as c; s_g its chance-corrected
    form ``(b_g − 1/|g|) / (1 − 1/|g|)`` (1 perfect, 0 chance, < 0 below chance)."""
    b = float(np.mean([np.mean(predicted[truth == c] == c) for c in classes]))
    k = classes.size
    return {
        "classes": sorted(int(c) for c in classes),
        "s_g": (b - 1.0 / k) / (1.0 - 1.0 / k),
        "b_g": b,
        "n": int(truth.size),
    }


def kind_means(
    group_scores: list[dict[str, Any]], groups: Sequence[Mapping[str, Any]] | None
) -> dict[str, float] | None:
    """Mean s_g per kind of held-out value (``shapes``: "colors" and "shapes"), each group's kind written into its
    score as ``held_out``; None when the groups name no kind. A pair blind to one kind can pass on the other."""
    kinds = {
        tuple(sorted(int(c) for c in g["classes"])): next(iter(g["held_out"]))
        for g in groups or ()
        if isinstance(g.get("held_out"), Mapping) and g["held_out"]
    }
    if not kinds:
        return None
    found: dict[str, list[float]] = {}
    for score in group_scores:
        kind = kinds.get(tuple(sorted(score["classes"])))
        score["held_out"] = kind
        if kind is not None and score["s_g"] is not None:
            found.setdefault(kind, []).append(float(score["s_g"]))
    return {kind: float(np.mean(values)) for kind, values in sorted(found.items())}


def _sign_vectors(n_groups: int, *, seed: int, draws: int) -> tuple[np.ndarray, bool]:
    """(M, G) ±1 sign vectors: all 2^G when G ≤ SIGN_FLIP_EXACT_MAX_GROUPS (exact), else the identity plus
    ``draws`` rows drawn by ``default_rng(seed)``; and whether the set is exact."""
    if n_groups <= SIGN_FLIP_EXACT_MAX_GROUPS:
        bits = (np.arange(2**n_groups)[:, None] >> np.arange(n_groups)[None, :]) & 1
        return 1.0 - 2.0 * bits, True  # row 0 is the identity
    drawn = np.random.default_rng(seed).integers(0, 2, size=(draws, n_groups))
    return np.vstack([np.ones((1, n_groups)), 1.0 - 2.0 * drawn]), False


def sign_flip_test(
    scores: np.ndarray, tau: float, *, seed: int = 0, draws: int = SIGN_FLIP_DRAWS
) -> tuple[float, float]:
    """(p_above, p_below) of the sign-flip test of the group scores s_g against τ (METRICS §7).

    With ``d_g = s_g − τ`` and ``D = mean_g d_g``: ``p_above = P_ε[mean_g ε_g d_g ≥ D]`` and
    ``p_below = P_ε[mean_g ε_g d_g ≤ D]``, ε uniform over all ``2^G`` sign vectors when G ≤ 16 (exact,
    vectorised), otherwise over ``draws`` vectors drawn by ``default_rng(seed)`` plus the identity. Ties (within
    ``1e-9 · (1 + max_g |d_g|)`` of D) count in both tails, in favour of the null; the identity always counts,
    so p ∈ [1/2^G, 1] (exact) or [1/(draws + 1), 1]. Small p_above: the s_g lie above τ; small p_below: below.
    """
    d = np.asarray(scores, dtype=np.float64).reshape(-1) - float(tau)
    if d.size == 0:
        raise ValueError("the sign-flip test needs at least one group score")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"group scores and τ must be finite, got {scores!r} and {tau!r}")
    if d.size > SIGN_FLIP_EXACT_MAX_GROUPS and draws < 1:
        raise ValueError(f"the Monte-Carlo sign-flip test needs ≥ 1 draw, got {draws}")
    signs, _ = _sign_vectors(d.size, seed=seed, draws=draws)
    stats = signs @ d / d.size
    observed = float(d.mean())
    eps = 1e-9 * (1.0 + float(np.max(np.abs(d))))
    p_above = float(np.count_nonzero(stats >= observed - eps)) / stats.size
    p_below = float(np.count_nonzero(stats <= observed + eps)) / stats.size
    return p_above, p_below


def min_groups_for(alpha: float) -> int:
    """Smallest G whose exact sign-flip test can reach α: the least G with ``1/2^G ≤ α`` (5 for α = 0.05)."""
    return max(1, math.ceil(-math.log2(alpha) - 1e-12))


def decide_outcome(
    scores: np.ndarray,
    tau: float = 0.03,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    draws: int = SIGN_FLIP_DRAWS,
) -> dict[str, Any]:
    """The three-way outcome of METRICS §7 from the group scores s_g (G = len(scores)).

    ``aligned`` if ``p_above ≤ α``, ``failed`` if ``p_below ≤ α``, ``inconclusive`` otherwise; with
    ``G < min_groups_for(α)`` (G < 5 at α = 0.05) no outcome can reach α and the outcome is ``inconclusive``
    with reason "too few classes (G = … < … groups)" whatever the scores (the p-values are still reported).
    Returns {outcome, outcome_reason (None when decided), failed (True / False / None), alignment_score
    (mean_g s_g), n_groups (G), p_above, p_below, failure_threshold (τ), outcome_alpha (α), sign_flip
    ("exact" or "monte-carlo (9999 draws + identity)")}.
    """
    tau, alpha = check_outcome_settings(tau, alpha)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p_above, p_below = sign_flip_test(s, tau, seed=seed, draws=draws)
    n_groups = int(s.size)
    needed = min_groups_for(alpha)
    reason: str | None
    if n_groups < needed:
        outcome, reason = "inconclusive", f"too few classes (G = {n_groups} < {needed} groups)"
    elif p_above <= alpha:
        outcome, reason = "aligned", None
    elif p_below <= alpha:
        outcome, reason = "failed", None
    else:
        outcome = "inconclusive"
        reason = f"neither p-value ≤ α (p_above = {p_above:.4g}, p_below = {p_below:.4g}, α = {alpha:g})"
    exact = n_groups <= SIGN_FLIP_EXACT_MAX_GROUPS
    return {
        "outcome": outcome,
        "outcome_reason": reason,
        "failed": None if outcome == "inconclusive" else outcome == "failed",
        "alignment_score": float(s.mean()),
        "n_groups": n_groups,
        "p_above": p_above,
        "p_below": p_below,
        "failure_threshold": tau,
        "outcome_alpha": alpha,
        "sign_flip": "exact" if exact else f"monte-carlo ({draws} draws + identity)",
    }


def check_outcome_settings(tau: float, alpha: float) -> tuple[float, float]:
    tau, alpha = float(tau), float(alpha)
    if not math.isfinite(tau):
        raise InvalidSettings(f"failure_threshold τ must be finite, got {tau}")
    if not 0.0 < alpha < 0.5:
        raise InvalidSettings(f"outcome_alpha α must lie in (0, 0.5), got {alpha}")
    return tau, alpha


def record_outcome(record: Mapping[str, Any]) -> str | None:
    """A record's §7 outcome: "aligned", "failed", "inconclusive", or None (no ground truth). A record without
    ``outcome`` but with a bool ``failed`` (the form before METRICS version 2) counts as decided."""
    outcome = record.get("outcome")
    if outcome in ("aligned", "failed", "inconclusive"):
        return str(outcome)
    failed = record.get("failed")
    if outcome is None and failed is not None:
        return "failed" if failed else "aligned"
    return None
