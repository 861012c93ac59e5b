"""Request and response bodies of /v1/batches and /v1/study (pydantic v2); they are part of the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from phasecore.settings import EngineSettings
from service.schemas import State, _check_text

BatchState = Literal["queued", "running", "succeeded", "failed", "partial"]
ModelReference = Annotated[str, StringConstraints(min_length=1, max_length=512)]

#: most models per side of a batch (a 64 × 64 grid is 4096 screenings; deployments cap active ones lower)
MAX_MODELS_PER_SIDE = 64


class BatchRequest(BaseModel):
    """Every (vision, language) pair of two model lists, on one paired dataset, with one set of settings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "vision": ["pkg:efficientnet-lite0", "pkg:efficientnet-lite1"],
                    "language": ["pkg:all-minilm-l6-v2"],
                    "dataset": "digits",
                    "options": {"n": 64, "probes": 1},
                }
            ]
        },
    )

    vision: list[ModelReference] = Field(
        min_length=1, max_length=MAX_MODELS_PER_SIDE, description="vision model references (rows of the matrix)"
    )
    language: list[ModelReference] = Field(
        min_length=1, max_length=MAX_MODELS_PER_SIDE, description="language model references (columns)"
    )
    dataset: str = Field(min_length=1, max_length=256, description="paired dataset reference, e.g. digits")
    options: EngineSettings = Field(default_factory=EngineSettings, description="engine settings of every pair")
    name: str | None = Field(None, max_length=200, description="a label for people reading reports")
    reuse: bool | None = Field(
        None, description="serve pairs already screened with identical settings from their stored results"
    )

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        _check_text(data)
        return data


class BatchCell(BaseModel):
    """One pair of the matrix: its screening and, once it succeeded, its headline figures."""

    vision: str
    language: str
    vision_index: int
    language_index: int
    screening_id: str
    state: State
    progress: float = Field(ge=0, le=1)
    s_ntk_cross: float | None = Field(description="uncentered cross-modal NTK alignment (METRICS §2)")
    s_ntk_cross_centered: float | None = Field(description="centered cross-modal NTK alignment (METRICS §2)")
    cka: float | None
    alignment_score: float | None = Field(description="measured alignment (METRICS §7)")
    failed: bool | None = Field(description="measured failure: alignment_score below the threshold")
    combined_rule: bool | None = Field(description="the paper's combined rule predicts failure")
    href: str


class BatchOut(BaseModel):
    """A batch: progress over its pairs and profiles, and the matrix of results (rows: vision models)."""

    id: str
    name: str | None
    state: BatchState = Field(description="queued | running, then succeeded, failed or partial (some pairs failed)")
    progress: float = Field(ge=0, le=1, description="mean progress of the pairs")
    pairs: dict[str, int] = Field(description="number of pairs by state, and total")
    profiles: dict[str, int] = Field(description="number of distinct model profiles by state, and total")
    dataset: str
    options: dict[str, Any]
    vision: list[str] = Field(description="canonical vision references, in matrix row order")
    language: list[str] = Field(description="canonical language references, in matrix column order")
    matrix: list[list[BatchCell]]
    created_at: datetime
    href: str
    links: dict[str, str] = Field(description="results.csv, results.json and the HTML report")


class StudyOut(BaseModel):
    """Prediction quality over every stored pair with ground truth (METRICS §8)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "insufficient"]
    reason: str | None = Field(description="why no rate or probability is reported (when insufficient)")
    n: int = Field(description="labelled pairs (distinct stored screenings with ground truth)")
    n_failed: int
    failure_base_rate: float | None
    min_labelled: int
    n_models: dict[str, int]
    cv: str = Field(description="the cross-validation scheme, in words")
    rules: dict[str, Any] | None = Field(description="per rule: n, accuracy, auroc, brier, claimed_accuracy")
    logistic: dict[str, Any] | None = Field(description="the logistic model under leave-one-model-out CV")
    model_state: dict[str, Any] | None = Field(
        description="the logistic model fitted on every labelled pair (the gate's 'measured' policy uses it)"
    )
    dataset: str | None = Field(None, description="the dataset filter, if any")
