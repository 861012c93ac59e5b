"""The CI gate's decision: is alignment of this pair predicted to fail? (``phasescreen gate``)

Two policies:

- ``paper``: the paper's **combined rule**, ``ΔNTK × log10(max AGOP ratio) > 2.5`` predicts failure (METRICS §5).
  It is the rule with the paper's highest claimed accuracy (96 %, a claim, not a measurement here), and the
  only one that uses both signals the paper argues for: the phase mismatch of the two models (ΔNTK) and the
  conditioning of their gradient outer products (AGOP). When it is undetermined (a missing stability, or
  ΔNTK = 0 with an infinite AGOP ratio) the gate falls back to the AGOP rule (``max ratio > 1e6``, claimed
  94 %) and says so; when both are undetermined it cannot decide.
- ``measured``: the logistic model of METRICS §8 fitted on this deployment's own labelled pairs
  (``phasecore.study.quality``); failure is predicted when ``P(failed) ≥ 0.5``. Until there are enough labelled pairs
  with both outcomes there is no such model and the gate cannot decide.
- ``reported``: the same logistic model fitted on the outcomes training runs reported for the pairs of the
  result's stratum (``phasecore.study.reported``: one label per pair, its latest run, by the reporter's own threshold);
  failure is predicted when ``P(failed) ≥ 0.5``. Of the result's reported strata (one per reported metric and
  dataset) the one with the most labelled pairs decides. Until one holds 20 labelled pairs with both outcomes
  the gate falls back to the ``measured`` policy and says so (which itself cannot decide without its model).

"Cannot decide" raises :class:`GateUndecided`; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from phasecore.errors import PhasescreenError
from phasecore.screening.batch import as_result
from phasecore.screening.result import ScreeningResult
from phasecore.study.failure_model import FEATURES, predict_failure_probability
from phasecore.study.reported import strata_of

Policy = Literal["paper", "measured", "reported"]
ScreenResultLike = ScreeningResult | Mapping[str, Any]
POLICIES: tuple[str, ...] = ("paper", "measured", "reported")
PROBABILITY_THRESHOLD = 0.5


class GateUndecided(PhasescreenError):
    """The policy cannot give a verdict for this pair (undetermined rules, or no fitted model yet)."""

    kind = "gate-undecided"


@dataclass(frozen=True)
class GateDecision:
    """A verdict with its one-line reason; ``exit_code`` is 1 when failure is predicted, else 0."""

    policy: str
    predicts_failure: bool
    reason: str
    rule: str | None = None
    value: float | None = None
    threshold: float | None = None
    probability: float | None = None
    fallback: str | None = None  # the policy that decided instead of ``policy`` (and the reason says why)

    @property
    def exit_code(self) -> int:
        return 1 if self.predicts_failure else 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}


def decide(
    result: ScreeningResult | Mapping[str, Any], policy: str = "paper", *, study: Mapping[str, Any] | None = None
) -> GateDecision:
    """The gate's verdict on one screening ``result`` (typed, or its stored JSON).

    ``study`` is the output of ``phasecore.study.quality.prediction_quality`` or ``study_by_stratum`` (needed by
    ``measured``), or the full study of ``store.records.run_study`` / ``GET /v1/study``, whose ``reported`` block
    ``reported`` needs. Raises GateUndecided when the policy gives no verdict, ValueError on an unknown policy.
    """
    typed = as_result(result)
    assert typed is not None
    if policy == "paper":
        return _paper(typed)
    if policy == "measured":
        return _measured(typed, study)
    if policy == "reported":
        return _reported(typed, study)
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


def _paper(result: ScreeningResult) -> GateDecision:
    for rule, fallback in (("combined_rule", False), ("agop_rule", True)):
        prediction = result.predictions.get(rule)
        if prediction is None or prediction.predicts_failure is None:
            continue
        verdict, value, threshold = prediction.predicts_failure, prediction.value, prediction.threshold
        shown = "+inf" if value is None else f"{value:.4g}"
        what = "combined rule ΔNTK × log10(AGOP)" if rule == "combined_rule" else "AGOP rule max(λ_1/λ_k)"
        comparison = ">" if verdict else "≤"
        outcome = "predicts alignment FAILURE" if verdict else "does not predict failure"
        note = " (the combined rule is undetermined for this pair)" if fallback else ""
        claimed = prediction.claimed_accuracy
        claim = ""
        if claimed:
            claim = f"; paper's claimed accuracy {claimed:.0%}, a claim; its threshold is uncalibrated for λ_1/λ_k"
        return GateDecision(
            policy="paper",
            predicts_failure=bool(verdict),
            reason=f"{what} = {shown} {comparison} {threshold:g}: {outcome}{note}{claim}",
            rule=rule,
            value=value,
            threshold=threshold,
        )
    raise GateUndecided(
        "neither the combined rule nor the AGOP rule gives a verdict for this pair (missing or non-finite "
        "stability or AGOP figures); see the result's metrics.notes"
    )


def require_fitted_model(study: Mapping[str, Any] | None) -> None:
    """Raise GateUndecided unless ``study`` holds a fitted failure model (the ``measured`` policy needs one)."""
    if study and study.get("status") == "ok" and study.get("model_state"):
        return
    why = (study or {}).get("reason") or "no prediction-quality study is available"
    if study and study.get("status") == "ok":
        why = "the labelled pairs with usable metrics do not hold both outcomes"
    raise GateUndecided(
        f"policy 'measured' needs the logistic model fitted on labelled pairs, and there are not enough "
        f"labelled pairs yet: {why}. Use --policy paper, or screen more pairs with ground truth."
    )


def require_policy_model(study: Mapping[str, Any] | None, policy: str) -> None:
    """Before a pair is screened: raise GateUndecided when ``policy`` can decide no pair with ``study``
    (``measured``: no fitted model; ``reported``: no fitted model on reported labels and none to fall back on)."""
    if policy == "measured":
        require_fitted_model(study)
    elif policy == "reported" and not reported_model_available(study):
        try:
            require_fitted_model(study)
        except GateUndecided as exc:
            raise GateUndecided(
                "policy 'reported' needs the logistic model fitted on 20 pairs with reported outcomes of both kinds "
                f"in the pair's stratum, and none is reported yet; its fallback: {exc}"
            ) from exc


def stratum_study(study: Mapping[str, Any] | None, result: ScreenResultLike) -> Mapping[str, Any] | None:
    """The figures of the result's own stratum (METRICS §8: numbers from other settings do not compare) from a
    by-stratum study; a single-stratum study (no ``strata``) is returned as it is."""
    if study is None or "strata" not in study:
        return study
    typed = as_result(result)
    key = typed.stratum.key if typed is not None and typed.stratum is not None else None
    entry: Mapping[str, Any]
    for entry in study.get("strata") or []:
        if (entry.get("stratum") or {}).get("key") == key:
            return entry
    return {
        "status": "insufficient",
        "reason": "the study holds no decided pairs in this result's stratum (same dataset, profile and outcome "
        "settings, metrics version)",
    }


def _measured(result: ScreeningResult, study: Mapping[str, Any] | None) -> GateDecision:
    study = stratum_study(study, result)
    require_fitted_model(study)
    assert study is not None
    return _logistic("measured", result, study, "labelled pairs")


def reported_entry(study: Mapping[str, Any] | None, result: ScreenResultLike) -> Mapping[str, Any] | None:
    """The reported stratum the ``reported`` policy uses for ``result``: of the reported strata of the
    result's own stratum, the one with the most labelled pairs (None without any)."""
    typed = as_result(result)
    key = typed.stratum.key if typed is not None and typed.stratum is not None else None
    candidates = strata_of((study or {}).get("reported"), key)
    return candidates[0] if candidates else None


def reported_model_available(study: Mapping[str, Any] | None) -> bool:
    """Whether any reported stratum of ``study`` holds a fitted failure model (before a pair is screened, its
    stratum is not known yet)."""
    return any(
        entry.get("status") == "ok" and entry.get("model_state")
        for entry in ((study or {}).get("reported") or {}).get("strata") or ()
    )


def _reported(result: ScreeningResult, study: Mapping[str, Any] | None) -> GateDecision:
    entry = reported_entry(study, result)
    if entry is not None and entry.get("status") == "ok" and entry.get("model_state"):
        described = entry["stratum"]
        what = f"pairs with a reported {described.get('reported_metric')} on {described.get('reported_dataset')}"
        return _logistic("reported", result, entry, what)
    if study is None or "reported" not in study:
        why = "the study holds no reported outcomes (an older server, or a study without them)"
    elif entry is None:
        why = "no training-run outcome is reported for a pair of this result's stratum"
    else:
        why = f"{entry.get('reason') or 'the reported labels do not hold both outcomes'}"
    try:
        decision = _measured(result, study)
    except GateUndecided as exc:
        raise GateUndecided(f"policy 'reported' has no fitted model ({why}), and its fallback: {exc}") from exc
    return GateDecision(
        **{
            **asdict(decision),
            "policy": "reported",
            "fallback": "measured",
            "reason": f"policy 'reported' has no fitted model yet ({why}); falling back to policy 'measured': "
            f"{decision.reason}",
        }
    )


def _logistic(policy: str, result: ScreeningResult, study: Mapping[str, Any], what: str) -> GateDecision:
    """The verdict of the logistic failure model of ``study`` (one stratum's figures) on ``result``."""
    try:
        probability = predict_failure_probability(study["model_state"], _features(result))
    except ValueError as exc:
        raise GateUndecided(f"policy {policy!r} cannot score this pair: {exc}") from exc
    fails = probability >= PROBABILITY_THRESHOLD
    logistic = study.get("logistic") or {}
    quality = ""
    if logistic.get("accuracy") is not None:
        auroc = logistic.get("auroc")
        quality = f"; leave-one-model-out accuracy {logistic['accuracy']:.2f}" + (
            f", AUROC {auroc:.2f}" if auroc is not None else ""
        )
    return GateDecision(
        policy=policy,
        predicts_failure=fails,
        reason=(
            f"P(failure) = {probability:.3f} {'≥' if fails else '<'} {PROBABILITY_THRESHOLD} by the logistic model "
            f"fitted on {study['model_state'].get('n', study.get('n'))} {what}{quality}: "
            f"{'predicts alignment FAILURE' if fails else 'does not predict failure'}"
        ),
        rule="logistic",
        probability=probability,
        threshold=PROBABILITY_THRESHOLD,
    )


def _features(result: ScreeningResult) -> dict[str, Any]:
    """The pair's metrics; an infinite AGOP ratio (stored as null, with the AGOP rule holding on a null value)
    reads as log(AGOP) = +inf, which the model clips to its training range, as fitting does."""
    features = {name: getattr(result.metrics, name) for name in FEATURES}
    agop = result.predictions.get("agop_rule")
    if features["log_agop"] is None and agop is not None and agop.predicts_failure and agop.value is None:
        features["log_agop"] = math.inf
    return features
