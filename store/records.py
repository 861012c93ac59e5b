"""Prediction quality of the paper's rules and of a logistic model, per stratum of stored pairs (METRICS §8).

The records come from stored results: each distinct succeeded screening gives its metrics version, its stratum
(dataset, profile and outcome settings, metrics version), its metrics, its measured outcome
(``ground_truth.outcome``: aligned, failed or inconclusive) and ``alignment_score``, and its rule verdicts to
``phasecore.study.strata.study_by_stratum``; figures are computed within one stratum only, and results without
``metrics_version == 2`` are left out (counted). Screenings served from another's stored result
(``reused_from``) and repeats of an identical request (same fingerprint) are counted once, so a pair screened
twice does not weigh twice.

Tenancy: with API keys required (``PHASESCREEN_REQUIRE_API_KEY``) the study of a caller, and the measured
figures attached to a tenant's result, read only that tenant's stored results (``tenant``); anonymous mode
reads every stored result. The shipped evidence (``phasecore.study.evidence``) is shown beside the stored pairs'
figures, never pooled with them.

Two label sources: ``measured`` (the screening's own proxy outcome, METRICS §7) and ``reported`` (what training
runs of the pairs achieved, ``outcomes`` reported through the API; ``phasecore.study.reported``). The study shows both,
side by side: the top level and ``strata`` are the measured labels', ``reported`` the reported labels'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from phasecore.screening.result import ScreeningResult
from phasecore.study.evidence import (
    SOURCE_DEPLOYMENT,
    ShippedEvidence,
    attach_measured_with_evidence,
    evidence_summary,
    shipped_evidence,
)
from phasecore.study.pair_record import ReportedRun, StudyRecord
from phasecore.study.quality import prediction_quality
from phasecore.study.report_schema import StudyOut
from phasecore.study.reported import reported_study, stratum_reported
from phasecore.study.strata import study_by_stratum
from store.models import SUCCEEDED, Outcome, Screening


def study_records(session: Session, *, dataset: str | None = None, tenant: str | None = None) -> list[StudyRecord]:
    """One record per distinct stored pair result (the newest of each fingerprint), labelled or not; only
    ``tenant``'s unless it is ``None``."""
    return list(records_by_fingerprint(session, dataset=dataset, tenant=tenant).values())


def records_by_fingerprint(
    session: Session, *, dataset: str | None = None, tenant: str | None = None
) -> dict[str, StudyRecord]:
    """``study_records`` by the fingerprint of the screening request each stands for."""
    query = (
        select(Screening.fingerprint, Screening.vision_ref, Screening.language_ref, Screening.result)
        .where(Screening.state == SUCCEEDED, Screening.result.is_not(None), Screening.reused_from.is_(None))
        .order_by(Screening.finished_at, Screening.id)
    )
    if dataset:
        query = query.where(Screening.dataset_ref == dataset.strip())
    if tenant is not None:
        query = query.where(Screening.tenant == tenant)
    newest: dict[str, StudyRecord] = {}
    for fingerprint, vision, language, result in session.execute(query).tuples():
        newest[fingerprint] = record_of(vision, language, result)
    return newest


def reported_outcomes(
    session: Session, *, dataset: str | None = None, tenant: str | None = None
) -> list[ReportedRun]:
    """Every reported run of a succeeded screening (only ``tenant``'s screenings unless it is ``None``), with the
    fingerprint of the screening's request: the input of ``phasecore.study.reported.reported_study``."""
    query = (
        select(
            Outcome.id,
            Screening.fingerprint,
            Outcome.metric,
            Outcome.dataset,
            Outcome.value,
            Outcome.success_threshold,
            Outcome.success_direction,
            Outcome.created_at,
        )
        .join(Screening, Screening.id == Outcome.screening_id)
        .where(Screening.state == SUCCEEDED)
    )
    if dataset:
        query = query.where(Screening.dataset_ref == dataset.strip())
    if tenant is not None:
        query = query.where(Screening.tenant == tenant)
    return [cast(ReportedRun, dict(row)) for row in session.execute(query).mappings()]  # the columns selected


def record_of(vision: str, language: str, result: ScreeningResult | Mapping[str, Any] | None) -> StudyRecord:
    """The study record of one stored result, read through the typed ``ScreeningResult``: model references,
    metrics version, stratum, features and the comparators' metrics, ``outcome`` (None: no ground truth),
    ``failed``, ``alignment_score`` and the ``group_scores`` it is the mean of. A stored result that no longer
    parses (read back as None) counts as version 1 (left out of every stratum)."""
    try:
        typed = result if isinstance(result, ScreeningResult) else ScreeningResult.model_validate(result)
    except ValidationError:
        typed = None
    if typed is None:
        return StudyRecord(vision=vision, language=language, metrics_version=None, stratum=None)
    gt, metrics = typed.ground_truth, typed.metrics
    # every feature of the failure model and every comparator (tests/store/test_records.py checks the list)
    return StudyRecord(
        vision=vision,
        language=language,
        metrics_version=typed.metrics_version,
        stratum=None if typed.stratum is None else typed.stratum.model_dump(mode="json"),
        outcome=None if gt is None else gt.outcome,
        failed=None if gt is None else gt.failed,
        alignment_score=None if gt is None else gt.alignment_score,
        s_ntk_cross=metrics.s_ntk_cross,
        s_ntk_cross_centered=metrics.s_ntk_cross_centered,
        delta_ntk=metrics.delta_ntk,
        log_agop=metrics.log_agop,
        cka=metrics.cka,
        mutual_knn=metrics.mutual_knn,
        s_ntk_cross_unbiased=metrics.s_ntk_cross_unbiased,
        group_scores=[] if gt is None else [g.model_dump(mode="json") for g in gt.group_scores],
        predictions={rule: p.model_dump(mode="json") for rule, p in typed.predictions.items()},
    )


def run_study(
    session: Session,
    *,
    dataset: str | None = None,
    stratum: str | None = None,
    min_labelled: int = 20,
    tenant: str | None = None,
    evidence: ShippedEvidence | None | bool = True,
) -> StudyOut:
    """The study per stratum over the stored records (``study_by_stratum``; only ``tenant``'s unless None),
    optionally of one dataset and of one stratum key, with the shipped evidence beside it.

    Returns ``{**figures, "source", "label_source", "stratum", "strata", "excluded_version_1",
    "excluded_no_stratum", "n_records", "dataset", "shipped_evidence", "reported"}``: the figures are those of
    the measured (proxy) labels, and ``reported`` holds the study of the reported labels
    (``phasecore.study.reported.reported_study``; a ``stratum`` filter keeps the reported strata of that key or of that
    proxy key). ``strata`` lists every stratum's figures (most decided pairs
    first); the top level repeats the figures of the requested stratum, or else of the largest one, with
    ``stratum`` describing it (None, with an insufficient status and the reason, when no stratum matches);
    ``source`` is "deployment": all of these come from the stored pairs. ``shipped_evidence`` is
    ``phasecore.study.evidence.evidence_summary`` (the shipped study, filtered alike; None without one).
    ``evidence``: True reads the installed shipped evidence, False leaves it out (None), or the evidence to
    show.
    """
    pairs = records_by_fingerprint(session, dataset=dataset, tenant=tenant)
    study = study_by_stratum(list(pairs.values()), min_labelled=min_labelled)
    reported = reported_study(
        pairs, reported_outcomes(session, dataset=dataset, tenant=tenant), min_labelled=min_labelled
    )
    strata = study["strata"]
    if stratum:
        key = stratum.strip()
        strata = [entry for entry in strata if entry["stratum"]["key"] == key]
        reported["strata"] = [
            entry for entry in reported["strata"] if key in (entry["stratum"]["key"], entry["stratum"]["proxy_key"])
        ]
    if strata:
        top = strata[0]
    else:
        empty = prediction_quality([], min_labelled=min_labelled)
        where = "".join(
            (f" on dataset {dataset}" if dataset else "", f" in stratum {stratum.strip()}" if stratum else "")
        )
        reason = f"no stored METRICS version 2 pair{where}: {empty['reason']}"
        top = {**empty, "reason": reason, "stratum": None}
    shipped = shipped_evidence() if evidence is True else (evidence or None)
    return StudyOut.model_validate(
        {
            **top,
            **study,
            "source": SOURCE_DEPLOYMENT,
            "label_source": "measured",
            "strata": strata,
            "dataset": dataset,
            "shipped_evidence": evidence_summary(shipped, dataset=dataset, stratum=stratum),
            "reported": reported,
        }
    )


_STUDY_CACHE: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}
_STUDY_CACHE_LOCK = threading.Lock()


def with_measured_rules(
    session: Session,
    result: ScreeningResult,
    *,
    tenant: str | None = None,
    max_age: float = 60.0,
    evidence: ShippedEvidence | None | bool = True,
) -> ScreeningResult:
    """``result`` with each rule's measured figures beside its claim (``phasecore.study.evidence.lookup_measured``):
    the stored pairs' figures of its own stratum once they hold 20 decided pairs, else the shipped evidence's
    for that stratum where it has one, else "insufficient" with the reason; and beside them its figures on
    reported labels (``predictions.<rule>.reported``, ``phasecore.study.reported.stratum_reported``). Only
    ``tenant``'s stored results count (pass the result's tenant when keys are required; None: every stored
    result, anonymous mode).
    ``evidence``: True reads the installed shipped evidence, False uses none, or the evidence to use.

    The study reads the stored results, so a worker reuses one per tenant for ``max_age`` seconds: the pair
    jobs of a 144-pair batch then read the table a few times, not once each."""
    bind = session.get_bind()
    url = str((bind.engine if isinstance(bind, Connection) else bind).url)
    key, now = (url, tenant), time.monotonic()
    with _STUDY_CACHE_LOCK:
        cached = _STUDY_CACHE.get(key)
    if cached is None or now - cached[0] > max_age:
        cached = (now, run_study(session, tenant=tenant, evidence=False).model_dump(mode="json"))
        with _STUDY_CACHE_LOCK:
            for stale in [k for k, (when, _) in _STUDY_CACHE.items() if now - when > max_age]:
                del _STUDY_CACHE[stale]  # tenants whose work stopped do not keep their study here
            _STUDY_CACHE[key] = cached
    shipped = shipped_evidence() if evidence is True else (evidence or None)
    document = result.model_dump(mode="json")
    measured = attach_measured_with_evidence(document, cached[1], shipped)
    reported = stratum_reported(document, cached[1].get("reported"))
    predictions = {
        rule: {**prediction, "reported": reported.get(rule)}
        for rule, prediction in (measured.get("predictions") or {}).items()
    }
    return ScreeningResult.model_validate({**measured, "predictions": predictions})
