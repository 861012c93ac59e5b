"""Reported outcomes: the study's second label source, the real runs beside the proxy (METRICS §8).

The screening's own outcome is a proxy (§7: a ridge map fitted at screening time). A team that then trains the
pair knows the real answer: what its run reached on its metric, and whether that is a success by its own
threshold. Those reports are a second label source, ``label_source = "reported"``, beside ``"measured"`` (the
proxy), and the study runs on them through the same code (``phasecore.study.quality``), so every figure of §8 exists for
both.

Choices:

- **Success** is the reporter's own: ``value ≥ success_threshold`` when ``success_direction`` is ``above``,
  ``value ≤ success_threshold`` when ``below`` (meeting the bar counts as success). A reported label is always
  decided: there is no "inconclusive" run.
- **One label per pair**: the **latest** reported run (by report time, then id) of the pair's screening
  request (its fingerprint, as the proxy study counts it), per reported metric and dataset. Not the best run: a
  pair trained more often would get more chances to cross the bar, and the label would reward retries rather
  than the pair. The latest run is also the team's current recipe. ``n_runs`` counts the runs it stands for.
- **Stratum**: the proxy's (dataset, profile and outcome settings, metrics version) plus the reported metric and
  dataset: zero-shot top-1 on ImageNet and retrieval R@1 on COCO are different questions, so their labels never
  pool. Its key is the sha256 of the three; ``proxy_key`` names the proxy stratum.
- ``alignment_score`` of a reported record (for Spearman's ρ) is the reported value, negated when success is
  ``below`` the threshold, so that larger means better aligned as for the proxy's score.
- **Agreement**: per reported stratum, the confusion table of the proxy's outcome (aligned, failed,
  inconclusive, none) against the reported one (success, failure), with the agreement rate and Cohen's κ over
  the pairs both decide.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from phasecore import METRICS_VERSION
from phasecore.groundtruth.outcome_test import record_outcome
from phasecore.study.pair_record import ReportedRun, StudyRecord
from phasecore.study.quality import RULES, prediction_quality
from phasecore.study.strata import measured_rules, study_by_stratum

LABEL_SOURCES: tuple[str, ...] = ("measured", "reported")
DIRECTIONS: tuple[str, ...] = ("above", "below")
LABEL_RULE = (
    "one label per pair and (reported metric, dataset): its latest reported run, a success when its value meets "
    "the reporter's own threshold in the reporter's direction"
)
PROXY_OUTCOMES: tuple[str, ...] = ("aligned", "failed", "inconclusive", "none")
REPORTED_OUTCOMES: tuple[str, ...] = ("success", "failure")


def is_success(value: float, threshold: float, direction: str) -> bool:
    """Whether a run of ``value`` succeeded by its reporter's definition: ``value ≥ threshold`` (``above``) or
    ``value ≤ threshold`` (``below``). Raises ValueError on another direction or a non-finite number."""
    if direction not in DIRECTIONS:
        raise ValueError(f"success direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    if not (math.isfinite(value) and math.isfinite(threshold)):
        raise ValueError("a reported value and its success threshold must be finite numbers")
    return value >= threshold if direction == "above" else value <= threshold


def reported_stratum(stratum: Mapping[str, Any], metric: str, dataset: str) -> dict[str, Any]:
    """The reported stratum of a proxy ``stratum`` ({key, dataset, metrics_version, settings}) for runs
    reported on ``metric`` over ``dataset``."""
    proxy_key = str(stratum["key"])
    key = hashlib.sha256(f"{proxy_key}\n{metric}\n{dataset}".encode()).hexdigest()
    return {
        "key": key,
        "dataset": stratum.get("dataset"),
        "metrics_version": stratum.get("metrics_version"),
        "settings": stratum.get("settings"),
        "proxy_key": proxy_key,
        "reported_metric": metric,
        "reported_dataset": dataset,
    }


def reported_records(
    pairs: Mapping[str, StudyRecord], outcomes: Sequence[ReportedRun]
) -> list[StudyRecord]:
    """The study records of the reported label source.

    pairs: the proxy study's records (``store.records.record_of``) by screening-request fingerprint.
    outcomes: reported runs, each with ``fingerprint`` (of the screening it reports on), ``metric``,
    ``dataset``, ``value``, ``success_threshold``, ``success_direction``, ``created_at`` (comparable) and
    ``id``; runs of a fingerprint not in ``pairs`` are left out.

    Returns one record per (fingerprint, metric, dataset) with its latest run: the proxy record with
    ``stratum`` replaced by the reported stratum (None when the proxy record has none: the study then leaves
    it out, counted), ``outcome`` "aligned" (success) or "failed", ``failed``, ``alignment_score`` (the value,
    negated for ``below``), ``proxy_outcome`` (the proxy's outcome, "none" without ground truth) and
    ``reported`` ({outcome_id, metric, dataset, value, success_threshold, success_direction, n_runs}).
    """
    latest: dict[tuple[str, str, str], ReportedRun] = {}
    runs: dict[tuple[str, str, str], int] = {}
    for outcome in outcomes:
        fingerprint = str(outcome["fingerprint"])
        if fingerprint not in pairs:
            continue
        group = (fingerprint, str(outcome["metric"]), str(outcome["dataset"]))
        runs[group] = runs.get(group, 0) + 1
        held = latest.get(group)
        if held is None or (outcome["created_at"], str(outcome["id"])) > (held["created_at"], str(held["id"])):
            latest[group] = outcome
    records: list[StudyRecord] = []
    for (fingerprint, metric, dataset), outcome in latest.items():
        proxy = pairs[fingerprint]
        value, threshold = float(outcome["value"]), float(outcome["success_threshold"])
        direction = str(outcome["success_direction"])
        success = is_success(value, threshold, direction)
        stratum = proxy.get("stratum")
        record: StudyRecord = {
            **proxy,
            "stratum": reported_stratum(stratum, metric, dataset) if isinstance(stratum, Mapping) else None,
            "outcome": "aligned" if success else "failed",
            "failed": not success,
            "alignment_score": value if direction == "above" else -value,
            "proxy_outcome": record_outcome(proxy) or "none",
            "reported": {
                "outcome_id": str(outcome["id"]),
                "metric": metric,
                "dataset": dataset,
                "value": value,
                "success_threshold": threshold,
                "success_direction": direction,
                "n_runs": runs[(fingerprint, metric, dataset)],
            },
        }
        records.append(record)
    return records


def agreement(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The proxy's outcome against the reported one over ``records`` (one reported stratum).

    Returns ``{table, n, n_both_decided, n_agree, agreement, cohen_kappa, proxy_aligned_reported_failure,
    proxy_failed_reported_success}``: ``table[proxy][reported]`` counts pairs (proxy aligned | failed |
    inconclusive | none; reported success | failure); ``agreement`` is the share of the pairs both decide where
    they agree (proxy aligned with success, failed with failure), ``cohen_kappa`` the same beyond chance (None
    where undefined: no such pair, or one outcome only on both sides).
    """
    table = {proxy: dict.fromkeys(REPORTED_OUTCOMES, 0) for proxy in PROXY_OUTCOMES}
    for record in records:
        proxy = str(record.get("proxy_outcome") or "none")
        reported = "failure" if record.get("failed") else "success"
        table[proxy if proxy in table else "none"][reported] += 1
    both = {
        (proxy, reported): table[proxy][reported] for proxy in ("aligned", "failed") for reported in REPORTED_OUTCOMES
    }
    n_both = sum(both.values())
    agree = both[("aligned", "success")] + both[("failed", "failure")]
    kappa = None
    if n_both:
        observed = agree / n_both
        proxy_aligned = (both[("aligned", "success")] + both[("aligned", "failure")]) / n_both
        reported_success = (both[("aligned", "success")] + both[("failed", "success")]) / n_both
        expected = proxy_aligned * reported_success + (1 - proxy_aligned) * (1 - reported_success)
        kappa = None if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return {
        "table": table,
        "n": len(records),
        "n_both_decided": n_both,
        "n_agree": agree,
        "agreement": agree / n_both if n_both else None,
        "cohen_kappa": kappa,
        "proxy_aligned_reported_failure": both[("aligned", "failure")],
        "proxy_failed_reported_success": both[("failed", "success")],
    }


def reported_study(
    pairs: Mapping[str, StudyRecord],
    outcomes: Sequence[ReportedRun],
    *,
    min_labelled: int = 20,
) -> dict[str, Any]:
    """``study_by_stratum`` over the reported labels (``reported_records``), each stratum with its
    ``agreement`` table beside its figures.

    Returns ``{label_source: "reported", label_rule, n_outcomes, strata, excluded_version_1,
    excluded_no_stratum, n_records}``; each stratum's ``stratum`` carries ``proxy_key``, ``reported_metric``
    and ``reported_dataset``.
    """
    records = reported_records(pairs, outcomes)
    study = study_by_stratum(records, min_labelled=min_labelled)
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        stratum = record.get("stratum")
        if isinstance(stratum, Mapping):
            by_key.setdefault(str(stratum["key"]), []).append(record)
    for entry in study["strata"]:
        entry["agreement"] = agreement(by_key.get(entry["stratum"]["key"], []))
    return {"label_source": "reported", "label_rule": LABEL_RULE, "n_outcomes": len(outcomes), **study}


def strata_of(reported: Mapping[str, Any] | None, proxy_key: str | None) -> list[Mapping[str, Any]]:
    """The reported strata of one proxy stratum, most decided pairs first (as the study orders them)."""
    if not reported or not proxy_key:
        return []
    return [entry for entry in reported.get("strata") or () if entry["stratum"].get("proxy_key") == proxy_key]


def stratum_reported(result: Mapping[str, Any], reported: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each rule's figures on reported labels for ``result`` (``predictions.<rule>.reported``), in the form of
    ``measured_rules``: from the reported stratum of the result's own stratum with the most decided pairs (its
    ``stratum`` names the reported metric and dataset; ``/v1/study`` lists every one), or "insufficient" with
    the reason."""
    stratum = result.get("stratum")
    key = stratum.get("key") if isinstance(stratum, Mapping) else None
    candidates = strata_of(reported, str(key) if key else None)
    if result.get("metrics_version") != METRICS_VERSION or not key:
        why = f"this result carries no METRICS version {METRICS_VERSION} stratum, so no reported labels compare with it"
        return _insufficient(why)
    if not candidates:
        return _insufficient(
            "no training-run outcome is reported yet for a pair of this result's stratum (POST "
            "/v1/screenings/{id}/outcomes, or `phasescreen outcome report`)"
        )
    entry = candidates[0]
    measured = measured_rules(entry)
    if entry["status"] != "ok":
        described = entry["stratum"]
        why = (
            f"{entry['n']} pairs of this stratum have a reported {described['reported_metric']} on "
            f"{described['reported_dataset']}: {entry['reason']}"
        )
        measured = {rule: {**figures, "reason": why} for rule, figures in measured.items()}
    return {rule: {**figures, "label_source": "reported"} for rule, figures in measured.items()}


def _insufficient(reason: str) -> dict[str, dict[str, Any]]:
    empty = measured_rules({**prediction_quality([]), "reason": reason}, stratum=None)
    return {rule: {**empty[rule], "label_source": "reported"} for rule in RULES}
