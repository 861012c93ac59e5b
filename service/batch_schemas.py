"""Request and response bodies of /v1/batches and /v1/study (pydantic v2); they are part of the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from service.contract import NO_NUL_PATTERN, REFERENCE_MAX_LENGTH, REFERENCE_PATTERN
from service.schemas import EngineSettingsBody, RequestBody, State, _dataset

BatchState = Literal["queued", "running", "succeeded", "failed", "partial"]
ModelReference = Annotated[
    str,
    StringConstraints(min_length=1, max_length=REFERENCE_MAX_LENGTH),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": REFERENCE_MAX_LENGTH, "pattern": REFERENCE_PATTERN}),
]

#: most models per side of a batch (a 64 × 64 grid is 4096 screenings; deployments cap active ones lower)
MAX_MODELS_PER_SIDE = 64


class BatchRequest(RequestBody):
    """Every (vision, language) pair of two model lists, on one paired dataset, with one set of settings."""

    model_config = ConfigDict(
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
    dataset: str = _dataset("paired dataset reference, e.g. digits")
    options: EngineSettingsBody = Field(default_factory=EngineSettingsBody, description="engine settings of every pair")
    name: str | None = Field(
        None,
        max_length=200,
        description="a label for people reading reports",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )
    reuse: bool | None = Field(
        None, description="serve pairs already screened with identical settings from their stored results"
    )


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
    failed: bool | None = Field(
        description="measured failure (METRICS §7): true or false for a decided pair, null when inconclusive"
    )
    outcome: Literal["aligned", "failed", "inconclusive"] | None = Field(
        None, description="the three-way outcome of the sign-flip test (METRICS §7, version 2)"
    )
    combined_rule: bool | None = Field(description="the paper's combined rule predicts failure (null: no verdict)")
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


