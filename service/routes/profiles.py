"""/v1/profiles and /v1/sources: what was computed, and what may be asked for."""

from __future__ import annotations

from fastapi import APIRouter

from service import screenings
from service.deps import ReaderDep, SessionDep, SettingsDep
from service.schemas import PROBLEM, ProfileOut, SourcesOut
from service.sources import describe_deployment
from service.views import profile_out

router = APIRouter(prefix="/v1", tags=["profiles"])


@router.get(
    "/profiles/{profile_id}",
    response_model=ProfileOut,
    responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 429: PROBLEM},
)
def get_profile(profile_id: str, session: SessionDep, caller: ReaderDep) -> ProfileOut:
    """A model profile: state, the resolved model identity, and the shapes of its stored arrays. With keys
    required, only a profile one of the caller's tenant's screenings uses."""
    return profile_out(screenings.get_profile(session, profile_id, caller.visible_tenant))


@router.get("/sources", response_model=SourcesOut, responses={401: PROBLEM, 403: PROBLEM, 429: PROBLEM})
def get_sources(settings: SettingsDep, caller: ReaderDep) -> SourcesOut:
    """Model sources and datasets this deployment allows, and its limits."""
    return describe_deployment(settings)
