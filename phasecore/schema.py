"""The screening result (the JSON of ``phasescreen screen`` and ``GET /v1/screenings/{id}``).

``ScreeningResult.model_json_schema()`` is written to ``phasecore/schemas/screening-result.schema.json``
(``python -m phasecore.schema``); a test keeps the file in step with the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_PATH = Path(__file__).parent / "schemas" / "screening-result.schema.json"


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


class Metrics(_Open):
    """Gradient-dynamics and representation metrics of the pair (METRICS §2–§6)."""

    s_ntk_cross: float | None = Field(description="A(Θ_v, Θ_l), uncentered: the paper's eq. 3 (§2)")
    s_ntk_cross_centered: float | None = Field(description="A(HΘ_vH, HΘ_lH): kernel CKA (§2)")
    s_ntk_cross_null: Null = Field(description="permutation null of s_ntk_cross")
    s_ntk_cross_centered_null: Null = Field(description="permutation null of s_ntk_cross_centered")
    s_ntk_vision: float | None = Field(description="NTK stability S_NTK of the vision model (§3)")
    s_ntk_language: float | None = Field(description="NTK stability S_NTK of the language model (§3)")
    phase_vision: str = Field(description="chaotic | optimal | lazy (the paper's bands), or undetermined")
    phase_language: str
    agop_ratio_vision: float | None = Field(description="λ_max/λ_min of the non-zero AGOP spectrum (§4)")
    agop_ratio_language: float | None
    delta_ntk: float | None = Field(description="|S_NTK^V − S_NTK^L| (§5)")
    log_agop: float | None = Field(description="log10(max agop_ratio) (§5)")
    combined: float | None = Field(description="ΔNTK × log(AGOP) (§5)")
    cka: float | None = Field(description="linear CKA of the embeddings, biased HSIC (§6)")
    mutual_knn: float | None = Field(description="mutual kNN overlap, k = knn_k (§6)")


class MeasuredRule(_Open):
    """The service's own accuracy of a rule over its stored labelled pairs (METRICS §8), a snapshot taken
    when this result was made; null figures with a reason until enough labelled pairs exist."""

    status: str = Field(description="'ok', or 'insufficient' (too few labelled pairs, or one outcome only)")
    reason: str | None = Field(description="why no figures are given yet")
    n_labelled: int = Field(description="stored pairs with ground truth the figures come from")
    failure_base_rate: float | None = Field(description="share of those pairs that failed (METRICS §7)")
    n: int = Field(description="pairs on which the rule gave a verdict")
    accuracy: float | None = Field(description="measured accuracy of the rule's verdict against 'failed'")
    auroc: float | None = Field(description="AUROC of the rule's value as a failure score")
    brier: float | None = Field(description="Brier score of the verdict as a 0/1 forecast")


class RulePrediction(_Open):
    """One of the paper's screening rules, evaluated on this pair (§5)."""

    value: float | None
    threshold: float
    predicts_failure: bool | None = Field(description="None when the value is undetermined")
    claimed_accuracy: float | None = Field(
        description="the paper's claimed accuracy: a claim, not a measurement"
    )
    source: str = Field(description="where the rule and its claimed accuracy come from")
    measured: MeasuredRule | None = Field(
        None, description="the rule's measured accuracy over this service's stored pairs, next to the claim"
    )


class ScreeningResult(BaseModel):
    """The full result of one screening; every number is reproducible from ``settings``."""

    model_config = ConfigDict(extra="forbid")

    vision: dict[str, Any] = Field(
        description="identity (source, name, revision/sha256, n_params) and kernel"
    )
    language: dict[str, Any]
    dataset: dict[str, Any] = Field(
        description="dataset reference, N, seed, per-class counts, sample-id hash"
    )
    settings: dict[str, Any] = Field(description="every engine setting (EngineSettings)")
    metrics: Metrics
    ground_truth: dict[str, Any] | None = Field(description="measured cross-modal alignment (§7)")
    predictions: dict[str, RulePrediction] = Field(description="the paper's rules with their verdicts")
    paper: dict[str, Any] = Field(description="the source paper and its claims, labelled as claims")
    timings: dict[str, float] = Field(description="seconds per stage")
    engine_version: str


def write_schema(path: Path = SCHEMA_PATH) -> str:
    text = json.dumps(ScreeningResult.model_json_schema(), indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


if __name__ == "__main__":
    write_schema(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH)
