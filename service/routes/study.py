"""/v1/study: how well the paper's rules and a fitted model predict measured failure (METRICS §8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from phasecore.study.report_schema import StudyOut
from service.deps import ReaderDep, SessionDep
from service.routes.screenings import _TEXT, FilterText
from service.schemas import PROBLEM
from store.records import run_study

router = APIRouter(prefix="/v1/study", tags=["study"])


@router.get("", response_model=StudyOut, responses={401: PROBLEM, 403: PROBLEM, 422: PROBLEM, 429: PROBLEM})
def get_study(
    session: SessionDep,
    caller: ReaderDep,
    dataset: Annotated[
        FilterText, Query(max_length=256, description="only pairs on this dataset", json_schema_extra=_TEXT)
    ] = None,
    stratum: Annotated[
        FilterText,
        Query(max_length=64, description="only this stratum (its sha256 key; see `strata`)", json_schema_extra=_TEXT),
    ] = None,
) -> StudyOut:
    """Per stratum (same dataset, settings and metrics version; version-1 results left out, counted): accuracy,
    AUROC and Brier score of each rule and of a logistic model under leave-one-model-out cross-validation over
    the decided pairs, with n, the failure base rate, the inconclusive pairs left out and the figures' range
    when they count as failed or aligned; each rule's Spearman ρ with alignment_score and its cross-validated
    threshold. The top level holds the requested stratum's figures, or the largest stratum's; `strata` all of
    them. `status: insufficient` with the reason below 20 decided pairs with both outcomes. With keys required,
    over the caller's tenant's results only. `shipped_evidence`: the study of the evidence run shipped with
    the package (its date, commit, command and strata, filtered alike), beside these figures and never pooled
    with them; null when none is installed. `reported`: the same figures on the outcomes training runs reported
    for the pairs (POST /v1/screenings/{id}/outcomes; one label per pair, its latest run, by the reporter's own
    threshold), one stratum per proxy stratum, reported metric and dataset, each with the confusion table of the
    proxy's outcome against the reported one (`agreement`); `label_source` says which labels each block uses."""
    return run_study(session, dataset=dataset, stratum=stratum, tenant=caller.visible_tenant)
