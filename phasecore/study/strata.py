"""The study per stratum (METRICS §8): pairs compare only within one stratum (same dataset, profile settings and
metrics version), and a screening result carries its own stratum's measured figures next to the paper's claims."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from phasecore import METRICS_VERSION
from phasecore.study.quality import RULES, prediction_quality

_REPORTED_STRATUM = ("proxy_key", "reported_metric", "reported_dataset")


def study_by_stratum(records: Sequence[Mapping[str, Any]], *, min_labelled: int = 20) -> dict[str, Any]:
    """``prediction_quality`` per stratum: pairs compare only within one ``stratum.key`` (METRICS §8).

    records: as for ``prediction_quality``, each with ``metrics_version`` and ``stratum`` ({key, dataset,
    metrics_version, settings}). A record without ``metrics_version == 2`` is left out of every stratum and
    counted in ``excluded_version_1``; a version-2 record without a stratum key in ``excluded_no_stratum``.

    Returns ``{"strata": [{"stratum": {key, dataset, metrics_version, settings}, **prediction_quality(...)},
    ...], "excluded_version_1", "excluded_no_stratum", "n_records"}``, strata with the most decided pairs
    first (then the most pairs, then by key).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    described: dict[str, dict[str, Any]] = {}
    excluded_version_1 = excluded_no_stratum = 0
    for record in records:
        if record.get("metrics_version") != METRICS_VERSION:
            excluded_version_1 += 1
            continue
        stratum = record.get("stratum")
        key = stratum.get("key") if isinstance(stratum, Mapping) else None
        if not isinstance(stratum, Mapping) or not key:
            excluded_no_stratum += 1
            continue
        groups.setdefault(str(key), []).append(record)
        described.setdefault(str(key), _stratum_description(stratum))
    strata = [
        {"stratum": described[key], **prediction_quality(group, min_labelled=min_labelled)}
        for key, group in groups.items()
    ]
    strata.sort(key=lambda s: (-s["n"], -s["n_pairs"], s["stratum"]["key"]))
    return {
        "strata": strata,
        "excluded_version_1": excluded_version_1,
        "excluded_no_stratum": excluded_no_stratum,
        "n_records": len(records),
    }


def measured_rules(
    quality: Mapping[str, Any], *, stratum: Mapping[str, Any] | None = None, source: str = "deployment"
) -> dict[str, dict[str, Any]]:
    """Each rule's measured figures from a ``prediction_quality`` result (one stratum), in the form a
    screening result carries next to the paper's claim: ``{status, reason, source, n_labelled,
    failure_base_rate, n, accuracy, auroc, brier, n_inconclusive, range_if_inconclusive, spearman_rho,
    cv_threshold, stratum}``. ``status`` is "insufficient" (with the reason, and null figures) until enough
    decided pairs with both outcomes exist (METRICS §8). ``stratum`` defaults to ``quality["stratum"]`` when it
    has one. ``source`` says whose pairs these are: "deployment" (the stored pairs the study read) or
    "shipped evidence" (``phasecore.study.evidence``)."""
    if stratum is None:
        stratum = quality.get("stratum")
    common = {
        "source": source,
        "n_labelled": quality["n"],
        "failure_base_rate": quality["failure_base_rate"],
        "n_inconclusive": quality.get("n_inconclusive", 0),
        "stratum": None if stratum is None else dict(stratum),
    }
    if quality["status"] != "ok" or not quality.get("rules"):
        empty = {
            "n": 0, "accuracy": None, "auroc": None, "brier": None, "interval95": None,
            "range_if_inconclusive": None, "spearman_rho": None, "cv_threshold": None,
        }  # fmt: skip
        return {rule: {"status": "insufficient", "reason": quality["reason"], **common, **empty} for rule in RULES}
    keys = ("n", "accuracy", "auroc", "brier", "interval95", "range_if_inconclusive", "spearman_rho", "cv_threshold")
    return {
        rule: {
            "status": "ok",
            "reason": None,
            **common,
            **{key: quality["rules"][rule].get(key) for key in keys},
        }
        for rule in RULES
    }


def stratum_measured(result: Mapping[str, Any], study: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The measured figures of ``result``'s own stratum in a ``study_by_stratum`` study (by
    ``result["stratum"]["key"]``), or "insufficient" with a reason naming the stratum and its decided pairs.
    A plain ``prediction_quality`` result (no ``strata``) is taken as it is."""
    if "strata" not in study:
        return measured_rules(study)
    stratum = result.get("stratum")
    key = stratum.get("key") if isinstance(stratum, Mapping) else None
    if result.get("metrics_version") != METRICS_VERSION or not isinstance(stratum, Mapping) or not key:
        empty = prediction_quality([])
        reason = (
            f"this result carries no METRICS version {METRICS_VERSION} stratum; measured figures compare only "
            "within one stratum (same dataset, settings and metrics version)"
        )
        return measured_rules({**empty, "reason": reason}, stratum=None)
    for entry in study["strata"]:
        if entry["stratum"]["key"] == key:
            if entry["status"] == "ok":
                return measured_rules(entry)
            reason = f"{_name(entry['stratum'])} holds {entry['n']} decided pairs: {entry['reason']}"
            return measured_rules({**entry, "reason": reason})
    empty = prediction_quality([])
    described = _stratum_description(stratum)
    reason = (
        f"{_name(described)} holds 0 decided pairs among the stored results; measured prediction quality "
        f"needs at least {empty['min_labelled']} with both outcomes in the same stratum"
    )
    return measured_rules({**empty, "reason": reason}, stratum=described)


def attach_measured(result: Mapping[str, Any], study: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``result`` whose ``predictions[rule]["measured"]`` holds the rule's measured figures over
    the stored pairs of the result's own stratum (``stratum_measured``; a snapshot taken when the result was
    made; ``/v1/study`` has the live ones). ``study`` is a ``study_by_stratum`` study (or one stratum's
    ``prediction_quality``)."""
    measured = stratum_measured(result, study)
    predictions = {
        rule: {**prediction, "measured": measured.get(rule)}
        for rule, prediction in (result.get("predictions") or {}).items()
    }
    return {**result, "predictions": predictions}


def _stratum_description(stratum: Mapping[str, Any]) -> dict[str, Any]:
    # a reported stratum (phasecore.study.reported) also names its proxy stratum and the reported metric and dataset
    extra = {name: stratum[name] for name in _REPORTED_STRATUM if name in stratum}
    return {
        "key": str(stratum.get("key")),
        "dataset": stratum.get("dataset"),
        "metrics_version": stratum.get("metrics_version"),
        "settings": stratum.get("settings"),
        **extra,
    }


def _name(stratum: Mapping[str, Any]) -> str:
    return f"stratum {str(stratum.get('key'))[:12]} (dataset {stratum.get('dataset')})"
