"""Bodies of ``/v1/screenings/{id}/outcomes``: what a training run of a screened pair achieved."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.contract import NO_NUL_PATTERN
from service.schemas import RequestBody, _check_text

#: a metric or method name: ``zero_shot_top1``, ``retrieval_r1``, ``linear-probe``, or a team's own
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/+@-]{0,63}$"
#: an evaluation dataset as the team names it: printable ASCII, no spaces at either end
DATASET_NAME_PATTERN = r"^[!-~](?:[ -~]{0,254}[!-~])?$"
RUN_URL_PATTERN = r"^https?://[!-~]+$"
NOTES_MAX_LENGTH = 2000
_COUNTS = ("examples", "steps")
#: the largest count: 2^53, exact as a JSON number in every reader (a validator reading 2^63 − 1 as a double
#: takes 2^63 + 191 for it, so a schema-valid body would be refused)
COUNT_MAX = 2**53


class OutcomeRequest(RequestBody):
    """What one training run of the screened pair achieved, and the team's own definition of success."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "metric": "zero_shot_top1",
                    "value": 0.412,
                    "success_threshold": 0.3,
                    "success_direction": "above",
                    "dataset": "imagenet-1k:val",
                    "examples": 3000000,
                    "steps": 12000,
                    "method": "lit",
                    "run_url": "https://wandb.example.com/team/align/runs/3kq9",
                    "notes": "frozen vision tower, 2 epochs",
                }
            ]
        },
    )

    metric: str = Field(
        pattern=NAME_PATTERN,
        max_length=64,
        description="what was measured: zero_shot_top1, retrieval_r1, or a name of the team's own",
    )
    value: float = Field(allow_inf_nan=False, description="what the run reached on `metric` (a finite number)")
    success_threshold: float = Field(
        allow_inf_nan=False, description="the team's bar for success on `metric` (a finite number)"
    )
    success_direction: Literal["above", "below"] = Field(
        description="`above`: success when value ≥ success_threshold (accuracy, recall); `below`: when value ≤ "
        "success_threshold (a loss, an error rate)"
    )
    dataset: str = Field(
        pattern=DATASET_NAME_PATTERN,
        max_length=256,
        description="the evaluation dataset the value was measured on, as the team names it (e.g. imagenet-1k:val)",
    )
    examples: int | None = Field(None, ge=0, le=COUNT_MAX, description="training examples seen")
    steps: int | None = Field(None, ge=0, le=COUNT_MAX, description="optimiser steps")
    method: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        max_length=64,
        description="how the pair was aligned: linear-probe, lit, full-finetune, or a name of the team's own",
    )
    run_url: str | None = Field(
        None, pattern=RUN_URL_PATTERN, max_length=2048, description="where the run is recorded (http or https)"
    )
    notes: str | None = Field(
        None,
        max_length=NOTES_MAX_LENGTH,
        description=f"free text, at most {NOTES_MAX_LENGTH} characters",
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:  # RequestBody's, and whole counts written with a fraction
        _check_text(data)
        if isinstance(data, dict):
            # JSON Schema's integer is a number without a fraction: 12000.0 is one (pydantic's strict int is not)
            return {
                key: int(value)
                if key in _COUNTS and isinstance(value, float) and value.is_integer() and abs(value) <= COUNT_MAX
                else value
                for key, value in data.items()
            }
        return data


class OutcomeOut(BaseModel):
    """A reported training-run outcome, with whether it is a success by the reporter's own threshold."""

    id: str
    screening_id: str
    metric: str
    value: float
    success_threshold: float
    success_direction: Literal["above", "below"]
    success: bool = Field(description="value meets success_threshold in success_direction")
    dataset: str
    examples: int | None
    steps: int | None
    method: str | None
    run_url: str | None
    notes: str | None
    proxy_outcome: Literal["aligned", "failed", "inconclusive"] | None = Field(
        description="the screening's own outcome (its ground truth, METRICS §7) to compare with; null without one"
    )
    created_at: datetime
    href: str


class OutcomePage(BaseModel):
    items: list[OutcomeOut] = Field(description="the screening's reported runs, newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= to read the next page; null on the last")
