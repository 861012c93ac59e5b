"""Prediction quality of the paper's rules and of a logistic model, per stratum of stored pairs (METRICS §8).

The records come from stored results: each distinct succeeded screening gives its metrics version, its stratum
(dataset, profile and outcome settings, metrics version), its metrics, its measured outcome
(``ground_truth.outcome``: aligned, failed or inconclusive) and ``alignment_score``, and its rule verdicts to
``phasecore.study.study_by_stratum``; figures are computed within one stratum only, and results without
``metrics_version == 2`` are left out (counted). Screenings served from another's stored result
(``reused_from``) and repeats of an identical request (same fingerprint) are counted once, so a pair screened
twice does not weigh twice.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from phasecore.schema import ScreeningResult
from phasecore.study import FEATURES, attach_measured, prediction_quality, study_by_stratum
from store.models import SUCCEEDED, Screening


def study_records(session: Session, *, dataset: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
    """One record per distinct stored pair result (the newest of each fingerprint), labelled or not; only
    ``tenant``'s unless it is ``None``."""
    query = (
        select(Screening.fingerprint, Screening.vision_ref, Screening.language_ref, Screening.result)
        .where(Screening.state == SUCCEEDED, Screening.result.is_not(None), Screening.reused_from.is_(None))
        .order_by(Screening.finished_at, Screening.id)
    )
    if dataset:
        query = query.where(Screening.dataset_ref == dataset.strip())
    if tenant is not None:
        query = query.where(Screening.tenant == tenant)
    newest: dict[str, dict[str, Any]] = {}
    for fingerprint, vision, language, result in session.execute(query).tuples():
        newest[fingerprint] = record_of(vision, language, result)
    return list(newest.values())


def record_of(vision: str, language: str, result: dict[str, Any]) -> dict[str, Any]:
    """The study record of one stored result, read through the typed ``ScreeningResult``: model references,
    metrics version, stratum, features, ``outcome`` (None: no ground truth), ``failed`` and ``alignment_score``.
    A stored result that no longer parses counts as version 1 (left out of every stratum)."""
    try:
        typed = ScreeningResult.model_validate(result)
    except ValidationError:
        return {"vision": vision, "language": language, "metrics_version": None, "stratum": None}
    gt = typed.ground_truth
    return {
        "vision": vision,
        "language": language,
        "metrics_version": typed.metrics_version,
        "stratum": None if typed.stratum is None else typed.stratum.model_dump(mode="json"),
        "outcome": None if gt is None else gt.outcome,
        "failed": None if gt is None else gt.failed,
        "alignment_score": None if gt is None else gt.alignment_score,
        **{name: getattr(typed.metrics, name) for name in FEATURES},
        "predictions": {rule: p.model_dump(mode="json") for rule, p in typed.predictions.items()},
    }


def run_study(
    session: Session,
    *,
    dataset: str | None = None,
    stratum: str | None = None,
    min_labelled: int = 20,
    tenant: str | None = None,
) -> dict[str, Any]:
    """The study per stratum over the stored records (``study_by_stratum``), optionally of one dataset and of
    one stratum key.

    Returns ``{**figures, "stratum", "strata", "excluded_version_1", "excluded_no_stratum", "n_records",
    "dataset"}``: ``strata`` lists every stratum's figures (most decided pairs first); the top level repeats
    the figures of the requested stratum, or else of the largest one, with ``stratum`` describing it (None,
    with an insufficient status and the reason, when no stratum matches).
    """
    study = study_by_stratum(study_records(session, dataset=dataset, tenant=tenant), min_labelled=min_labelled)
    strata = study["strata"]
    if stratum:
        strata = [entry for entry in strata if entry["stratum"]["key"] == stratum.strip()]
    if strata:
        top = strata[0]
    else:
        empty = prediction_quality([], min_labelled=min_labelled)
        where = "".join(
            (f" on dataset {dataset}" if dataset else "", f" in stratum {stratum.strip()}" if stratum else "")
        )
        reason = f"no stored METRICS version 2 pair{where}: {empty['reason']}"
        top = {**empty, "reason": reason, "stratum": None}
    return {**top, **study, "strata": strata, "dataset": dataset}


_STUDY_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}
_STUDY_CACHE_LOCK = threading.Lock()


def with_measured_rules(session: Session, result: dict[str, Any], *, max_age: float = 60.0) -> dict[str, Any]:
    """``result`` with each rule's measured figures over the stored pairs of its own stratum beside its claim
    (``attach_measured``: "insufficient", with the reason, when that stratum has no figures yet).

    The study reads every stored result, so a worker reuses one for ``max_age`` seconds: the pair jobs of a
    144-pair batch then read the table a few times, not once each."""
    bind = session.get_bind()
    url = str((bind.engine if isinstance(bind, Connection) else bind).url)
    now = time.monotonic()
    with _STUDY_CACHE_LOCK:
        cached = _STUDY_CACHE.get(url)
    if cached is None or now - cached[0] > max_age:
        cached = (now, run_study(session))
        with _STUDY_CACHE_LOCK:
            _STUDY_CACHE[url] = cached
    return attach_measured(result, cached[1])
