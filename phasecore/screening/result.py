"""The screening result (the JSON of ``phasescreen screen`` and ``GET /v1/screenings/{id}``).

``ScreeningResult.model_json_schema()`` is written to ``phasecore/schemas/screening-result.schema.json``
(``python -m phasecore.screening.result``); a test keeps the file in step with the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "screening-result.schema.json"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Null(_Open):
    """Permutation null of a statistic (METRICS §2): B re-pairings of the samples."""

    observed: float | None = Field(description="the statistic on the true pairing")
    mean: float | None = Field(description="null mean")
    std: float | None = None
    p95: float | None = Field(description="null 95th percentile")
    z: float | None = Field(description="(observed − mean) / std")
    p_value: float | None = Field(description="one-sided, (1 + #{null ≥ observed}) / (B + 1)")
    permutations: int
    excess: float | None = Field(None, description="(observed − mean) / (1 − mean): compares across N (§2 v2)")
    within: Literal["all", "class"] = Field(
        "all", description="'all': any re-pairing; 'class': permutations inside each class (the within-class null)"
    )


class AgopSummary(_Open):
    """AGOP spectrum of one model (METRICS §4, version 2)."""

    ratio: float | None = Field(None, description="agop_ratio = λ_1/λ_k; a lower bound when censored; null: see reason")
    log10_ratio: float | None = None
    k: int | None = Field(None, description="k of λ_1/λ_k (agop_k)")
    censored: bool = Field(False, description="λ_k < agop_censor_below · λ_1 (the float32 floor): ratio is the bound")
    unstable: bool | None = Field(
        None, description="a sub-block's ratio (half the probes, half the distinct inputs) differs by > 0.3 in log10"
    )
    ratio_half_probes: float | None = None
    ratio_half_inputs: float | None = None
    reason: str | None = Field(None, description="why ratio is null (U·M < 8k)")
    condition: float | None = Field(None, description="λ_max/λ_min above rtol · λ_max (paper's form; no rule reads it)")
    at_cut: bool = Field(False, description="condition's λ_min sits within 10× of the cut")
    rtol: float | None = None
    effective_rank: float | None = None
    participation_ratio: float | None = None
    decay: float | None = Field(None, description="α of λ_r ∝ r^(−α) over r = 1..k")
    n_nonzero: int | None = None
    rows: int | None = Field(None, description="U·M, the size of the AGOP Gram")
    space: str = "parameters"


class StabilityPoint(_Open):
    lr_scale: float = Field(description="c of η = c / λ_max")
    eta: float
    s_ntk: float | None
    s_ntk_centered: float | None = None
    phase: str
    loss_start: float | None = None
    loss_end: float | None = None


class Stability(_Open):
    """The stability probe of one model (METRICS §3); values compare only at equal (n_s, T, c)."""

    s_ntk: float | None
    s_ntk_centered: float | None = None
    phase: str
    eta: float | None = None
    lambda_max: float | None = None
    steps: int = Field(description="T")
    subset: int = Field(description="n_s")
    lr_scale: float = Field(1.0, description="c of the headline S_NTK and the phase")
    n_distinct: int | None = Field(None, description="distinct inputs in the subset")
    precision: str = Field("float32", description="of K_0, the training steps and Θ̂(θ_T): stability_precision")
    curve: list[StabilityPoint] = Field(default_factory=list, description="S_NTK per stability_lr_scales entry")


class Metrics(_Open):
    """Gradient-dynamics and representation metrics of the pair (METRICS §2–§6)."""

    s_ntk_cross: float | None = Field(description="A(Θ_v, Θ_l), uncentered: the paper's eq. 3 (§2)")
    s_ntk_cross_centered: float | None = Field(description="A(HΘ_vH, HΘ_lH): kernel CKA, biased (§2)")
    s_ntk_cross_unbiased: float | None = Field(
        None, description="unbiased centered alignment (U-statistic HSIC): compares across N (§2 v2)"
    )
    s_ntk_cross_null: Null = Field(description="permutation null of s_ntk_cross")
    s_ntk_cross_centered_null: Null = Field(description="permutation null of s_ntk_cross_centered")
    s_ntk_cross_unbiased_null: Null | None = Field(None, description="permutation null of s_ntk_cross_unbiased")
    s_ntk_cross_centered_within_class_null: Null | None = Field(
        None, description="within-class null of s_ntk_cross_centered: agreement beyond the labels (§2 v2)"
    )
    s_ntk_vision: float | None = Field(description="NTK stability S_NTK of the vision model (§3)")
    s_ntk_language: float | None = Field(description="NTK stability S_NTK of the language model (§3)")
    phase_vision: str = Field(description="chaotic | optimal | lazy (the paper's bands), or undetermined")
    phase_language: str
    agop_ratio_vision: float | None = Field(description="λ_1/λ_k of the AGOP spectrum (§4 v2); see agop_vision")
    agop_ratio_language: float | None
    agop_condition_vision: float | None = Field(None, description="λ_max/λ_min above 1e-6 λ_max (paper's form)")
    agop_condition_language: float | None = None
    delta_ntk: float | None = Field(description="|S_NTK^V − S_NTK^L| (§5)")
    log_agop: float | None = Field(description="log10(max agop_ratio) (§5)")
    combined: float | None = Field(description="ΔNTK × log(AGOP) (§5)")
    cka: float | None = Field(description="linear CKA of the embeddings, biased HSIC (§6)")
    mutual_knn: float | None = Field(description="mutual kNN overlap, k = knn_k (§6)")
    agop_vision: AgopSummary | None = None
    agop_language: AgopSummary | None = None
    stability_vision: Stability | None = None
    stability_language: Stability | None = None
    representation: dict[str, Any] | None = Field(None, description="CKA and mutual kNN with their nulls (§6)")
    notes: list[str] = Field(default_factory=list)


class GroupScore(_Open):
    classes: list[int]
    s_g: float | None = Field(description="(b_g − 1/|g|) / (1 − 1/|g|)")
    b_g: float | None = Field(None, description="mean over c ∈ g of the share of c's images predicted as c")
    n: int | None = None
    held_out: str | None = Field(None, description="the kind of value the group holds out (shapes: colors, shapes)")


class GroundTruth(_Open):
    """Measured cross-modal alignment and the pair's three-way outcome (METRICS §7, version 2)."""

    method: str
    n: int
    n_classes: int
    seen_accuracy: float | None = None
    unseen_accuracy: float | None = None
    alignment_score: float | None = Field(description="mean_g s_g over the class-disjoint groups")
    outcome: Literal["aligned", "failed", "inconclusive"] | None = Field(
        None, description="by the exact sign-flip test of s_g − τ over the groups (null in version-1 results)"
    )
    outcome_reason: str | None = None
    failed: bool | None = Field(description="true or false for a decided pair, null when inconclusive")
    n_groups: int | None = Field(None, description="G")
    group_scores: list[GroupScore] = Field(default_factory=list)
    group_means: dict[str, float] | None = Field(
        None, description="mean s_g per kind of held-out value (shapes: colors, shapes): a pair can pass on one"
    )
    p_above: float | None = Field(None, description="P_ε[mean ε(s − τ) ≥ D]: aligned when ≤ α")
    p_below: float | None = Field(None, description="P_ε[mean ε(s − τ) ≤ D]: failed when ≤ α")
    failure_threshold: float | None = Field(None, description="τ")
    outcome_alpha: float | None = Field(None, description="α")
    figures: dict[str, Any] = Field(default_factory=dict, description="each accuracy with n, chance, p-values, CI")


class EvidenceLabel(_Open):
    """Which shipped evidence file measured figures come from (phasecore.study.evidence)."""

    created_at: str = Field(description="when the evidence file was written (ISO 8601, UTC)")
    commit: str | None = Field(None, description="git commit of the code that produced it ('-dirty': uncommitted)")
    command: str | None = Field(None, description="the command that produced it")


class ShippedStratum(_Open):
    """A stratum the shipped evidence covers."""

    key: str
    dataset: str | None = None
    metrics_version: int | None = None
    options: dict[str, Any] = Field(
        default_factory=dict, description="the stratum's settings that differ from the engine's defaults"
    )
    n_labelled: int | None = Field(None, description="decided pairs of the shipped evidence in it")
    status: str | None = None


class MeasuredRule(_Open):
    """A rule's measured accuracy (METRICS §8), a snapshot taken when this result was made, from one source:
    the deployment's own decided pairs of the result's stratum once there are 20, else the shipped evidence's
    figures for that stratum (labelled as such), else null figures with a reason. Counts and figures of the
    two sources are never mixed."""

    status: str = Field(description="'ok', or 'insufficient' (too few labelled pairs, or one outcome only)")
    reason: str | None = Field(description="why no figures are given yet")
    n_labelled: int = Field(description="decided pairs with ground truth the figures come from")
    failure_base_rate: float | None = Field(description="share of those pairs that failed (METRICS §7)")
    n: int = Field(description="pairs on which the rule gave a verdict")
    accuracy: float | None = Field(description="measured accuracy of the rule's verdict against 'failed'")
    auroc: float | None = Field(description="AUROC of the rule's value as a failure score")
    brier: float | None = Field(description="Brier score of the verdict as a 0/1 forecast")
    interval95: dict[str, Any] | None = Field(
        None,
        description="95% intervals of accuracy, AUROC and Brier by a two-way bootstrap over models "
        "(METRICS §8, 2026-12-07): {accuracy, auroc, brier, n_draws}",
    )
    source: Literal["deployment", "shipped evidence"] | None = Field(
        None,
        description="whose pairs the figures come from: this deployment's stored pairs (its tenant's when keys "
        "are required) or the shipped evidence (absent in results made before the shipped evidence existed)",
    )
    evidence: EvidenceLabel | None = Field(None, description="the shipped evidence file (source 'shipped evidence')")
    deployment_n_labelled: int | None = Field(
        None,
        description="source 'shipped evidence': the deployment's own decided pairs in this stratum, counted in "
        "none of these figures (its own figures take over at 20)",
    )
    shipped_evidence_strata: list[ShippedStratum] | None = Field(
        None,
        description="when the deployment's figures are insufficient: the strata the shipped evidence covers "
        "(null there: no shipped evidence installed, as the reason says; null too where the figures are given)",
    )
    label_source: Literal["measured", "reported"] | None = Field(
        None,
        description="the labels the figures are scored against: the screenings' own proxy outcome (METRICS §7; "
        "null means the same) or the outcomes training runs reported (`reported`, phasecore.study.reported)",
    )


class RulePrediction(_Open):
    """One of the paper's screening rules, evaluated on this pair (§5)."""

    value: float | None
    threshold: float
    predicts_failure: bool | None = Field(description="None when the value is undetermined")
    claimed_accuracy: float | None = Field(
        description="the paper's claimed accuracy: a claim, not a measurement"
    )
    source: str = Field(description="where the rule and its claimed accuracy come from")
    rule: str | None = None
    note: str | None = Field(None, description="why there is no verdict, or what qualifies it")
    threshold_note: str | None = Field(None, description="where the threshold comes from (the paper's, uncalibrated)")
    lower_bound: bool = Field(False, description="the value is a lower bound (a censored AGOP ratio)")
    measured: MeasuredRule | None = Field(
        None, description="the rule's measured accuracy over this service's stored pairs, next to the claim"
    )
    reported: MeasuredRule | None = Field(
        None,
        description="the rule's figures against the outcomes training runs reported for this stratum's pairs "
        "(their latest run per pair; the reported stratum with the most pairs), a snapshot taken when this "
        "result was made; 'insufficient' until 20 pairs with both outcomes are reported",
    )


class ModelSummary(_Open):
    identity: dict[str, Any] = Field(description="source, name, revision/sha256, n_params")
    profile_key: str
    kernel: dict[str, Any] = Field(description="method, probes M, sketch k, P, d, seed, distinct inputs U")


class Stratum(_Open):
    """Where a result pools in the study (METRICS §8): the same dataset, profile and outcome settings, and
    metrics version. Pairs compare only within one ``key``."""

    key: str
    dataset: str
    metrics_version: int
    settings: dict[str, Any]


class ScreeningResult(BaseModel):
    """The full result of one screening; every number is reproducible from ``settings``."""

    model_config = ConfigDict(extra="forbid")

    vision: ModelSummary
    language: ModelSummary
    dataset: dict[str, Any] = Field(
        description="dataset reference, N, seed, per-class counts, sample-id hash, distinct inputs per modality"
    )
    settings: dict[str, Any] = Field(description="every engine setting (EngineSettings)")
    metrics: Metrics
    ground_truth: GroundTruth | None = Field(description="measured cross-modal alignment (§7)")
    predictions: dict[str, RulePrediction] = Field(description="the paper's rules with their verdicts")
    paper: dict[str, Any] = Field(description="the source paper and its claims, labelled as claims")
    timings: dict[str, float] = Field(description="seconds per stage")
    engine_version: str
    metrics_version: int = Field(
        1, description="the version of the metric definitions (docs/metrics.md) the numbers follow (absent: 1)"
    )
    stratum: Stratum | None = Field(None, description="the study's stratum of this pair (version 2)")


def write_schema(path: Path = SCHEMA_PATH) -> str:
    text = json.dumps(ScreeningResult.model_json_schema(), indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


if __name__ == "__main__":
    write_schema(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH)
