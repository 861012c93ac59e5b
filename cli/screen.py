"""``phasescreen screen``: one screening on this machine (the embedded default, no servers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cli.engine_flags import add_engine_arguments, engine_overrides
from cli.local import add_local_arguments, local_device, screen_locally, store_screening
from phasecore.screening.result import AgopSummary, RulePrediction, ScreeningResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "screen",
        help="screen one vision-language pair locally and write the JSON result",
        description="Compute both model profiles (cached) and the pair metrics; print a summary and write "
        "the full JSON result. Exit 0 on success, 2 on a usage or input error.",
    )
    p.add_argument("--vision", required=True, help="vision model, e.g. pkg:efficientnet-lite0, timm:resnet18")
    p.add_argument(
        "--language", required=True, help="language model, e.g. pkg:all-minilm-l6-v2, hf:bert-base-uncased"
    )
    p.add_argument(
        "--dataset", default="digits", help="digits | cifar10 | cifar100 | svhn | manifest:FILE.jsonl"
    )
    add_engine_arguments(p)
    p.add_argument("--output", "-o", type=Path, help="where to write the JSON result")
    p.add_argument("--no-cache", action="store_true", help="recompute both profiles")
    add_local_arguments(p)
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from phasecore.settings import EngineSettings

    return EngineSettings.model_validate(engine_overrides(args))


class _Bars:
    """One progress bar per stage (loading, kernel, stability, spectrum, pair); silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.stage: str | None = None

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=100,
                desc=f"{stage:>10}",
                leave=False,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
            )
        self.bar.n = int(round(100 * min(max(fraction, 0.0), 1.0)))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _measured(rule: RulePrediction) -> str:
    measured = rule.measured
    if measured is None:
        return ""
    if measured.source == "shipped evidence":
        when = measured.evidence.created_at[:10] if measured.evidence is not None else "unknown date"
        own = f"; {measured.deployment_n_labelled} of this deployment's own" if measured.deployment_n_labelled else ""
        if measured.status != "ok" or measured.accuracy is None:
            return f"; shipped evidence ({when}): no figures ({measured.n_labelled} decided pairs{own})"
        return f"; measured {measured.accuracy:.0%} over {measured.n} pairs (shipped evidence of {when}{own})"
    if measured.status != "ok" or measured.accuracy is None:
        return f"; measured: not yet ({measured.n_labelled} labelled pairs in this stratum)"
    return f"; measured {measured.accuracy:.0%} over {measured.n} pairs"


def _reported(rule: RulePrediction) -> str:
    """The rule's figures on reported training-run outcomes, once there are (nothing before: the line stays as
    it was for a deployment that reports none)."""
    reported = rule.reported
    if reported is None or reported.status != "ok":
        return ""
    stratum = (reported.model_extra or {}).get("stratum") or {}
    where = f"{stratum.get('reported_metric')} on {stratum.get('reported_dataset')}"
    accuracy = f"accuracy {reported.accuracy:.0%}, " if reported.accuracy is not None else ""
    return f"; reported runs ({where}): {accuracy}AUROC {_fmt(reported.auroc, '.2f')} over {reported.n_labelled} pairs"


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _agop(summary: AgopSummary | None, ratio: float | None) -> str:
    if summary is None or ratio is None:
        reason = summary.reason if summary is not None else None
        return "AGOP λ_1/λ_k n/a" + (f" ({reason})" if reason else "")
    flags = [f for f, on in (("censored: a lower bound", summary.censored), ("UNSTABLE", summary.unstable)) if on]
    return (
        f"AGOP λ_1/λ_{summary.k} {'≥ ' if summary.censored else ''}{ratio:.3g}"
        + (f" [{', '.join(flags)}]" if flags else "")
        + f" (λ_max/λ_min {_fmt(summary.condition, '.3g')})"
    )


def summary(result: ScreeningResult | dict[str, Any]) -> str:
    """The lines ``phasescreen screen`` prints: the headline figures with their nulls, the rules, the outcome."""
    result = result if isinstance(result, ScreeningResult) else ScreeningResult.model_validate(result)
    m, gt = result.metrics, result.ground_truth
    nu, nc, nw = m.s_ntk_cross_null, m.s_ntk_cross_centered_null, m.s_ntk_cross_centered_within_class_null
    distinct = result.dataset.get("distinct_inputs") or {}
    lines = [
        f"vision   {result.vision.identity['ref']}: S_NTK {_fmt(m.s_ntk_vision)} ({m.phase_vision}), "
        f"{_agop(m.agop_vision, m.agop_ratio_vision)}, distinct images {_fmt(distinct.get('vision'), 'd')}",
        f"language {result.language.identity['ref']}: S_NTK {_fmt(m.s_ntk_language)} ({m.phase_language}), "
        f"{_agop(m.agop_language, m.agop_ratio_language)}, distinct captions {_fmt(distinct.get('language'), 'd')}",
        f"S_cross  uncentered {_fmt(m.s_ntk_cross)} (null mean {_fmt(nu.mean)}, p {_fmt(nu.p_value, '.3f')}); "
        f"centered {_fmt(m.s_ntk_cross_centered)} (null mean {_fmt(nc.mean)}, p {_fmt(nc.p_value, '.3f')}, "
        f"excess {_fmt(nc.excess, '.3f')}"
        + (f", within-class p {_fmt(nw.p_value, '.3f')}" if nw is not None else "")
        + f"); unbiased {_fmt(m.s_ntk_cross_unbiased)}",
        f"CKA {_fmt(m.cka)}, mutual kNN {_fmt(m.mutual_knn)}; ΔNTK {_fmt(m.delta_ntk)}, "
        f"log(AGOP) {_fmt(m.log_agop, '.2f')}, combined {_fmt(m.combined, '.3f')}",
        "paper's rules (claimed: the paper's claim, not verified; thresholds the paper's, uncalibrated for λ_1/λ_k;"
        " measured: over the decided pairs stored here in this stratum, or the shipped evidence's while fewer"
        " than 20 are stored):",
    ]
    for name, rule in result.predictions.items():
        verdict = {True: "predicts FAILURE", False: "no failure predicted", None: "no verdict"}[rule.predicts_failure]
        claim = f", claimed {rule.claimed_accuracy:.0%}" if rule.claimed_accuracy else ""
        lines.append(
            f"  {name:20s} value {_fmt(rule.value, '.4g')} vs {rule.threshold:g}: {verdict}{claim}{_measured(rule)}"
            f"{_reported(rule)}"
        )
    if gt:
        unseen = gt.figures.get("unseen") or {}
        outcome = (gt.outcome or ("FAILED" if gt.failed else "aligned")).upper()
        lines.append(
            f"measured alignment: unseen-class accuracy {_fmt(gt.unseen_accuracy, '.3f')} "
            f"(chance {_fmt(unseen.get('chance'), '.3f')}, class-clustered p "
            f"{_fmt(unseen.get('p_value_clustered'), '.3g')}), seen {_fmt(gt.seen_accuracy, '.3f')}, "
            f"alignment_score {_fmt(gt.alignment_score, '.3f')} over G = {_fmt(gt.n_groups, 'd')} class groups "
            f"vs τ = {_fmt(gt.failure_threshold, 'g')}: p_above {_fmt(gt.p_above, '.3g')}, "
            f"p_below {_fmt(gt.p_below, '.3g')} (α = {_fmt(gt.outcome_alpha, 'g')}) -> {outcome}"
            + (f" ({gt.outcome_reason})" if gt.outcome_reason and gt.outcome == "inconclusive" else "")
        )
    lines += [f"note: {note}" for note in m.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from phasecore.errors import PhasescreenError
    from phasecore.sources import resolve_device

    try:
        settings = _settings(args)
        device = local_device(args)
    except (ValidationError, ValueError) as exc:
        print(f"phasescreen screen: invalid settings: {exc}", file=sys.stderr)
        return 2
    bars = _Bars(enabled=not args.quiet and sys.stderr.isatty())
    try:
        resolve_device(device)  # an unusable device is a usage error, said before any work
        typed = screen_locally(args, settings, device=device, command="screen", progress=bars)
    except PhasescreenError as exc:
        bars.close()
        print(f"phasescreen screen: {exc}", file=sys.stderr)
        return 2
    bars.close()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(typed.model_dump(mode="json"), indent=2, allow_nan=False) + "\n")
    print(summary(typed))
    screening_id = store_screening(args, settings, typed)
    if screening_id is not None:
        print(f"stored as screening {screening_id}")
    if args.output:
        print(f"full result: {args.output}")
    return 0
