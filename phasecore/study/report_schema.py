"""The study report, typed: what ``store.records.run_study`` returns, ``GET /v1/study`` serves and
``phasescreen study`` prints (METRICS §8). The class names are the API's schema names (``StudyOut``, ...)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FiguresOut(BaseModel):
    """Accuracy, AUROC and Brier score over a set of pairs."""

    model_config = ConfigDict(extra="allow")

    n: int
    accuracy: float | None
    auroc: float | None
    brier: float | None


class StratumOut(BaseModel):
    """What pairs compare within (METRICS §8): the same dataset, profile and outcome settings and metrics
    version; figures from different strata do not compare."""

    model_config = ConfigDict(extra="allow")

    key: str = Field(description="sha256 hex of the stratum (the `stratum` query parameter of /v1/study)")
    dataset: str | None = Field(None, description="the paired dataset of the stratum's pairs")
    metrics_version: int | None = Field(None, description="the METRICS version of the stratum's results (2)")
    settings: dict[str, Any] | None = Field(None, description="the profile and outcome settings shared by its pairs")


class InconclusiveRangeOut(BaseModel):
    """The figures again with the inconclusive pairs added, counted as failed, then as aligned."""

    as_failed: FiguresOut
    as_aligned: FiguresOut


class SpearmanOut(BaseModel):
    """Spearman's ρ of a rule's score with alignment_score over every pair of the stratum that has both
    (inconclusive ones included); the score is oriented so that larger predicts failure, so a useful rule
    has ρ < 0."""

    model_config = ConfigDict(extra="allow")

    rho: float | None
    p: float | None
    n: int
    score: str = Field(description="the rule's continuous score, in words")


class CvThresholdOut(BaseModel):
    """A threshold on the rule's score chosen in each leave-one-model-out fold to maximise the training
    accuracy (score > threshold predicts failure), scored on the held-out pair."""

    model_config = ConfigDict(extra="allow")

    score: str = Field(description="the rule's continuous score, in words")
    threshold: float | None = Field(description="the threshold chosen on every decided pair")
    training_accuracy: float | None = Field(description="its accuracy on those pairs (in-sample)")
    held_out_accuracy: float | None = Field(description="accuracy of the fold thresholds on the held-out pairs")
    n: int = Field(description="held-out pairs scored")
    no_threshold: int = Field(description="folds whose training pairs gave no threshold")
    fold_thresholds: dict[str, float] | None = Field(description="min, median and max of the fold thresholds")


class RuleQualityOut(BaseModel):
    """One rule of §5 over the decided pairs of a stratum."""

    model_config = ConfigDict(extra="allow")

    n: int = Field(description="decided pairs on which the rule gave a verdict")
    accuracy: float | None
    auroc: float | None = Field(description="AUROC of the rule's continuous score")
    brier: float | None = Field(description="Brier score of the verdict as a 0/1 forecast (= 1 − accuracy)")
    brier_form: str | None = Field(None, description="how the Brier score treats the verdict")
    claimed_accuracy: float | None = Field(None, description="the paper's claim, not a measurement")
    source: str | None = None
    range_if_inconclusive: InconclusiveRangeOut | None = None
    spearman_rho: SpearmanOut | None = None
    cv_threshold: CvThresholdOut | None = None


class _QualityOut(BaseModel):
    """Prediction quality within one stratum, over the pairs with a decided outcome (METRICS §8)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "insufficient"]
    reason: str | None = Field(description="why no rate or probability is reported (when insufficient)")
    n: int = Field(description="decided pairs (distinct stored screenings whose outcome is aligned or failed)")
    n_failed: int
    failure_base_rate: float | None
    n_inconclusive: int = Field(0, description="pairs with an inconclusive outcome, left out of n")
    n_without_ground_truth: int = Field(0, description="pairs screened without ground truth")
    n_pairs: int | None = Field(None, description="every pair of the stratum")
    min_labelled: int
    n_models: dict[str, int]
    cv: str = Field(description="the cross-validation scheme, in words")
    rules: dict[str, RuleQualityOut] | None = Field(
        description="per rule: n, accuracy, auroc, brier, claimed_accuracy, range_if_inconclusive, spearman_rho, "
        "cv_threshold"
    )
    logistic: dict[str, Any] | None = Field(
        description="the logistic model under leave-one-model-out CV (clipping and scaling fitted per training "
        "fold), with range_if_inconclusive"
    )
    model_state: dict[str, Any] | None = Field(
        description="the logistic model fitted on every decided pair of the stratum (the gate's 'measured' "
        "policy uses it)"
    )


class StudyStratumOut(_QualityOut):
    """The figures of one stratum."""

    stratum: StratumOut


class ShippedEvidenceOut(BaseModel):
    """The study of the evidence run shipped with the package (docs/evidence.md), shown beside the deployment's
    own figures and never pooled with them; filtered by the same `dataset` and `stratum` parameters."""

    model_config = ConfigDict(extra="allow")

    source: Literal["shipped evidence"] = "shipped evidence"
    created_at: str = Field(description="when the evidence file was written (ISO 8601, UTC)")
    commit: str | None = Field(None, description="git commit of the code that produced it ('-dirty': uncommitted)")
    command: str | None = Field(None, description="the command that produced it")
    settings: dict[str, Any] = Field(default_factory=dict, description="what the evidence run used")
    metrics_version: int = Field(description="the METRICS version of its records and figures")
    n_records: int = Field(description="per-pair records in the evidence file")
    excluded_version_1: int = 0
    excluded_no_stratum: int = 0
    strata: list[StudyStratumOut] = Field(
        default_factory=list, description="the shipped figures per stratum, most decided pairs first"
    )


class AgreementOut(BaseModel):
    """Does the proxy agree with the real runs? The screening's own outcome (METRICS §7) against the reported
    one, over the pairs of one reported stratum."""

    model_config = ConfigDict(extra="allow")

    table: dict[str, dict[str, int]] = Field(
        description="pairs by proxy outcome (aligned, failed, inconclusive, none) and reported outcome (success, "
        "failure)"
    )
    n: int = Field(description="pairs with a reported label")
    n_both_decided: int = Field(description="pairs the proxy decided too (aligned or failed)")
    n_agree: int = Field(description="of those, pairs where proxy aligned meets success or proxy failed failure")
    agreement: float | None = Field(description="n_agree / n_both_decided")
    cohen_kappa: float | None = Field(description="agreement beyond chance; null where undefined")
    proxy_aligned_reported_failure: int
    proxy_failed_reported_success: int


class ReportedStratumKeyOut(StratumOut):
    """A stratum of reported labels: the proxy's stratum and the reported metric and dataset (runs on another
    metric or dataset answer another question, and never pool)."""

    proxy_key: str = Field(description="the key of the proxy (measured) stratum this one refines")
    reported_metric: str = Field(description="the metric the runs reported")
    reported_dataset: str = Field(description="the dataset they reported it on")


class ReportedStratumOut(StudyStratumOut):
    """The figures of one reported stratum, with the agreement of the proxy and the reported outcomes."""

    stratum: ReportedStratumKeyOut
    agreement: AgreementOut


class ReportedStudyOut(BaseModel):
    """The study on reported labels: what training runs of the pairs achieved, by the reporters' own thresholds,
    one label per pair (its latest run) and reported stratum. Every figure of the measured study, per stratum."""

    model_config = ConfigDict(extra="allow")

    label_source: Literal["reported"] = "reported"
    label_rule: str = Field(description="how a pair's label is chosen among its reported runs, in words")
    n_outcomes: int = Field(description="reported runs read (of the caller's tenant's screenings, keys required)")
    n_records: int = Field(description="labelled pairs: one per pair, reported metric and dataset")
    excluded_version_1: int = 0
    excluded_no_stratum: int = 0
    strata: list[ReportedStratumOut] = Field(
        default_factory=list, description="every reported stratum's figures, most decided pairs first"
    )


class StudyOut(_QualityOut):
    """Prediction quality per stratum of stored pairs (METRICS §8). The top-level figures are those of the
    requested stratum, or else of the largest one (`stratum` says which); `strata` has every stratum. All of
    them are the deployment's own (the caller's tenant's when keys are required), on the measured (proxy)
    labels; `reported` holds the same study on the outcomes training runs reported, and `shipped_evidence` the
    shipped evidence's figures, both beside them, never mixed in."""

    dataset: str | None = Field(None, description="the dataset filter, if any")
    stratum: StratumOut | None = Field(None, description="the stratum whose figures are at the top level")
    strata: list[StudyStratumOut] = Field(
        default_factory=list, description="every stratum's figures, most decided pairs first"
    )
    excluded_version_1: int = Field(0, description="stored results without metrics_version 2, left out")
    excluded_no_stratum: int = Field(0, description="version-2 results without a stratum key, left out")
    n_records: int | None = Field(None, description="distinct stored results read")
    source: Literal["deployment"] = Field(
        "deployment", description="whose pairs the figures above come from: this deployment's stored pairs"
    )
    shipped_evidence: ShippedEvidenceOut | None = Field(
        None, description="the shipped evidence's study (null: none installed, or an older server)"
    )
    label_source: Literal["measured"] = Field(
        "measured", description="the labels of the figures above: the screenings' own proxy outcome (METRICS §7)"
    )
    reported: ReportedStudyOut | None = Field(
        None,
        description="beside them, the same study on the outcomes training runs reported (POST "
        "/v1/screenings/{id}/outcomes), with the proxy-against-reported confusion table per stratum (null: an "
        "older server)",
    )
