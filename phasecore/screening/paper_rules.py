"""The paper's pair-level screening rules (METRICS §3 phases, §5 rules).

Every threshold and claimed accuracy here is the paper's, returned as the paper's claim with its source, never
as a result of phasescreen; the service's own accuracy of each rule is measured in ``phasecore.study.quality`` (§8).

The AGOP rules read ``agop_ratio = λ_1/λ_k`` (METRICS §4, version 2). The paper's thresholds (1e6, 2.5) were set
on the paper's own, undefined ratio: they are kept as the paper's, labelled "uncalibrated for λ_1/λ_k", and the
study (§8) reports each rule's AUROC and the threshold the stored pairs support. A ratio that is null (too few
distinct rows for λ_k) or unstable (its sub-blocks disagree) gives the AGOP and combined rules no verdict; a
censored ratio (λ_k under the float32 floor) is a lower bound, so it can only confirm ``> threshold``.

Non-finite inputs: None (not measured) or NaN anywhere, an infinite stability, or an AGOP ratio below 1
(impossible for λ_1/λ_k) leave the rules that use them undetermined: ``predicts_failure = None`` with a ``note``
saying why. Values that are not finite are returned as None (JSON has no inf/NaN), with a note. Nothing here
raises on a number.
"""

from __future__ import annotations

import math
from typing import Any

from phasecore.paper import (
    AGOP_THRESHOLD,
    CLAIM_SOURCE,
    COMBINED_THRESHOLD,
    CROSS_CHAOTIC_BELOW,
    NTK_DIFFERENCE_THRESHOLD,
    PAPER,
    PAPER_TITLE,
    UNCALIBRATED,
    Phase,
    phase_of,
)

__all__ = ["PAPER", "PAPER_TITLE", "Phase", "pair_rules", "phase_of"]


def pair_rules(
    *,
    s_ntk_vision: float | None,
    s_ntk_language: float | None,
    agop_ratio_vision: float | None,
    agop_ratio_language: float | None,
    s_ntk_cross: float | None,
    agop_censored: tuple[bool, bool] = (False, False),
    agop_unstable: tuple[bool | None, bool | None] = (False, False),
    agop_reasons: tuple[str | None, str | None] = (None, None),
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The paper's screening rules of one pair (METRICS §5).

    Inputs: S_NTK^V, S_NTK^L (§3), ``agop_ratio = λ_1/λ_k`` of both models (§4; None when not eligible, with
    ``agop_reasons``), their ``censored`` and ``unstable`` flags (vision, language), and S_NTK^cross =
    A(Θ_v, Θ_l) uncentered (§2).

    Derived: ``ΔNTK = |S_NTK^V − S_NTK^L|``, ``log(AGOP) = log10(max(agop_ratio_v, agop_ratio_l))`` (the worse
    of the two models), ``combined = ΔNTK × log(AGOP)``.

    Returns ``(derived, predictions)``. ``derived`` has keys ``delta_ntk``, ``log_agop``, ``combined``,
    ``agop_ratio_max`` (float or None when not finite), ``phase_vision``, ``phase_language`` and ``notes``
    (list of str). ``predictions`` maps ``agop_rule``, ``combined_rule``, ``ntk_difference_rule`` and
    ``cross_phase_rule`` to ``{value, threshold, predicts_failure, claimed_accuracy, source, rule, note}``:
    value (float or None), predicts_failure (bool, or None when undetermined), claimed_accuracy (0.94, 0.96,
    or None where the paper claims none).
    """
    s_v, s_l, cross = _as_float(s_ntk_vision), _as_float(s_ntk_language), _as_float(s_ntk_cross)
    ratios = (_as_float(agop_ratio_vision), _as_float(agop_ratio_language))
    notes: list[str] = []

    delta: float | None = None
    if _valid_stability(s_v) and _valid_stability(s_l):
        delta = abs(s_v - s_l)
    else:
        notes.append(f"S_NTK (vision {s_v}, language {s_l}) is not finite: ΔNTK is undetermined")

    ratio_max: float | None = None
    agop_blocker: str | None = None  # why the AGOP and combined rules give no verdict
    for role, reason in zip(("vision", "language"), agop_reasons, strict=True):
        if reason:
            notes.append(f"the {role} AGOP ratio is null: {reason}")
    if all(_valid_ratio(r) for r in ratios):
        ratio_max = max(ratios)
        if math.isinf(ratio_max):
            notes.append("an AGOP ratio is infinite: log(AGOP) = +inf, the AGOP rule holds")
    else:
        agop_blocker = "an AGOP ratio is null (or not ≥ 1): no verdict"
        notes.append(f"AGOP ratios {ratios} are not all ≥ 1 (or NaN): log(AGOP) is undetermined")
    unstable = [role for role, flag in zip(("vision", "language"), agop_unstable, strict=True) if flag]
    if unstable:
        agop_blocker = f"the {' and '.join(unstable)} AGOP ratio is unstable (sub-blocks differ > 0.3 in log10)"
        notes.append(f"{agop_blocker}: the AGOP and combined rules give no verdict")
    # a censored ratio is a lower bound: it can confirm "> threshold" but never deny it
    censored = ratio_max is not None and any(
        c and r == ratio_max for c, r in zip(agop_censored, ratios, strict=True)
    )
    if censored:
        notes.append("the larger AGOP ratio is censored (λ_k under the float32 floor): it is a lower bound")
    log_agop = None if ratio_max is None else math.log10(ratio_max)

    combined: float | None = None
    if delta is not None and log_agop is not None:
        if math.isinf(log_agop) and delta == 0.0:
            notes.append("ΔNTK = 0 and log(AGOP) = +inf: combined = 0 × ∞ is undetermined")
        else:
            combined = delta * log_agop

    cross_value = cross if math.isfinite(cross) else None
    if cross_value is None:
        notes.append(f"S_NTK^cross = {cross} is not finite: the cross-phase rule is undetermined")

    derived: dict[str, Any] = {
        "delta_ntk": delta,
        "log_agop": _finite_or_none(log_agop),
        "combined": _finite_or_none(combined),
        "agop_ratio_max": _finite_or_none(ratio_max),
        "phase_vision": phase_of(s_v),
        "phase_language": phase_of(s_l),
        "notes": notes,
    }
    predictions = {
        "agop_rule": _rule(
            ratio_max,
            AGOP_THRESHOLD,
            above=True,
            claimed=0.94,
            rule="max(agop_ratio_vision, agop_ratio_language) > 1e6 predicts failure (agop_ratio = λ_1/λ_k)",
            blocker=agop_blocker,
            lower_bound=censored,
            threshold_note=UNCALIBRATED,
        ),
        "combined_rule": _rule(
            combined,
            COMBINED_THRESHOLD,
            above=True,
            claimed=0.96,
            rule="combined = ΔNTK × log10(max agop_ratio) > 2.5 predicts failure (agop_ratio = λ_1/λ_k)",
            blocker=agop_blocker,
            lower_bound=censored,
            threshold_note=UNCALIBRATED,
        ),
        "ntk_difference_rule": _rule(
            delta,
            NTK_DIFFERENCE_THRESHOLD,
            above=True,
            claimed=None,
            rule="ΔNTK = |S_NTK^V − S_NTK^L| > 0.5 predicts failure",
        ),
        "cross_phase_rule": _rule(
            cross_value,
            CROSS_CHAOTIC_BELOW,
            above=False,
            claimed=None,
            rule="S_NTK^cross < 0.25: a chaotic pair, predicts failure",
        ),
    }
    return derived, predictions


def _rule(
    value: float | None,
    threshold: float,
    *,
    above: bool,
    claimed: float | None,
    rule: str,
    blocker: str | None = None,
    lower_bound: bool = False,
    threshold_note: str = "the paper's threshold",
) -> dict[str, Any]:
    note = None
    verdict: bool | None
    if value is None:
        verdict = None
        note = blocker or "an input is missing or not finite; no verdict"
    elif blocker:
        verdict, note = None, blocker
    else:
        verdict = value > threshold if above else value < threshold
        if math.isinf(value):
            note = f"value is {'+' if value > 0 else '-'}inf (reported as None)"
        elif lower_bound and not verdict:
            verdict = None
            note = f"the value is a lower bound (censored AGOP ratio) at or below {threshold:g}: no verdict"
        elif lower_bound:
            note = "the value is a lower bound (censored AGOP ratio) and already exceeds the threshold"
    return {
        "lower_bound": lower_bound,
        "threshold_note": threshold_note,
        "value": _finite_or_none(value),
        "threshold": threshold,
        "predicts_failure": verdict,
        "claimed_accuracy": claimed,
        "source": CLAIM_SOURCE,
        "rule": rule,
        "note": note,
    }


def _as_float(x: float | None) -> float:
    """None (not measured) reads as NaN, so that every rule using it is undetermined."""
    return math.nan if x is None else float(x)


def _valid_stability(s: float) -> bool:
    return math.isfinite(s)


def _valid_ratio(r: float) -> bool:
    return not math.isnan(r) and r >= 1.0


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
