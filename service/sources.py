"""What this deployment accepts: allowed model sources, loadable datasets, limits."""

from __future__ import annotations

from service.schemas import SourcesOut
from service.settings import ApiSettings


def describe_deployment(settings: ApiSettings) -> SourcesOut:
    from phasecore.data import list_datasets
    from phasecore.references.registry import describe_sources

    return SourcesOut(
        allowed_sources=list(settings.allowed_sources),
        allowed_models=list(settings.allowed_models),
        sources=describe_sources(settings.allowed_sources),
        datasets=list_datasets(settings.data_root),
        limits={
            "max_n": settings.max_n,
            "max_params": settings.max_params,
            "job_timeout_s": settings.job_timeout,
            "max_body_bytes": settings.max_body_bytes,
            "rate_limit_per_minute": settings.rate_limit_per_minute,
        },
    )
