"""The study's record of one screened pair: what the study reads of a stored result (METRICS §8).

``store.records.record_of`` builds one from a stored ``ScreeningResult``; the shipped evidence stores its
``evidence_record`` part; tests and simulations plant them. A key that is absent reads as not measured, so every
reader takes ``Mapping[str, Any]`` as well (records read back from older evidence files hold fewer keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypedDict


class StudyRecord(TypedDict, total=False):
    """One screened pair as the study reads it."""

    vision: str  # the canonical model references
    language: str
    metrics_version: int | None  # None: a stored result that no longer parses (left out of every stratum)
    stratum: dict[str, Any] | None  # {key, dataset, metrics_version, settings}: pairs compare only within one
    outcome: str | None  # aligned | failed | inconclusive (§7); None: no ground truth
    failed: bool | None
    alignment_score: float | None
    group_scores: list[dict[str, Any]]  # the held-out groups' {classes, s_g}, whose mean alignment_score is
    predictions: dict[str, dict[str, Any]]  # rule -> {value, predicts_failure, ...}
    # the features of the fitted model (failure_model.FEATURES) and the comparators (quality.COMPARATORS)
    s_ntk_cross: float | None
    s_ntk_cross_centered: float | None
    s_ntk_cross_unbiased: float | None
    delta_ntk: float | None
    log_agop: float | None
    cka: float | None
    mutual_knn: float | None
    # the reported label source's records only (study.reported.reported_records): the proxy's own outcome
    # ("none" without ground truth) and the run reported on the pair
    proxy_outcome: str
    reported: dict[str, Any]


class ReportedRun(TypedDict):
    """One training run reported on a screened pair (``POST /v1/screenings/{id}/outcomes``), as the study reads
    it: ``fingerprint`` of the screening's request, the run's ``metric`` on ``dataset`` and its ``value`` against
    ``success_threshold`` in ``success_direction``."""

    id: str
    fingerprint: str
    metric: str
    dataset: str
    value: float
    success_threshold: float
    success_direction: Literal["above", "below"]
    created_at: datetime
