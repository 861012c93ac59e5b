"""/v1/study: how well the paper's rules and a fitted model predict measured failure (METRICS §8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.batch_schemas import StudyOut
from service.deps import SessionDep
from service.routes.screenings import FilterText
from service.schemas import ProblemOut
from service.study import run_study

router = APIRouter(prefix="/v1/study", tags=["study"])

_PROBLEM = {"model": ProblemOut, "content": {"application/problem+json": {}}}


@router.get("", response_model=StudyOut, responses={422: _PROBLEM, 429: _PROBLEM})
def get_study(
    session: SessionDep,
    dataset: Annotated[FilterText, Query(max_length=256, description="only pairs on this dataset")] = None,
) -> StudyOut:
    """Accuracy, AUROC and Brier score of each rule and of a logistic model under leave-one-model-out
    cross-validation, with n and the failure base rate; `status: insufficient` with the reason below 20
    labelled pairs with both outcomes."""
    return StudyOut.model_validate(run_study(session, dataset=dataset))
