"""What this deployment accepts: allowed model sources, loadable datasets, limits."""

from __future__ import annotations

from typing import Any

from service.schemas import SourcesOut
from service.settings import ServiceSettings


def _as_rows(described: Any) -> list[dict[str, Any]]:
    """The engine's catalogue as a list of objects, whether it came as a list or a name-keyed mapping."""
    if isinstance(described, dict):
        return [
            {"name": name, **value} if isinstance(value, dict) else {"name": name, "description": str(value)}
            for name, value in described.items()
        ]
    return [row if isinstance(row, dict) else {"name": str(row)} for row in described or []]


def describe_deployment(settings: ServiceSettings) -> SourcesOut:
    from phasecore.data import list_datasets
    from phasecore.sources import describe_sources

    allowed = list(settings.allowed_sources)
    sources = [row for row in _as_rows(describe_sources()) if str(row.get("name")) in allowed]
    return SourcesOut(
        allowed_sources=allowed,
        sources=sources,
        datasets=_as_rows(list_datasets()),
        limits={
            "max_n": settings.max_n,
            "max_params": settings.max_params,
            "job_timeout_s": settings.job_timeout,
            "max_body_bytes": settings.max_body_bytes,
            "rate_limit_per_minute": settings.rate_limit_per_minute,
        },
    )
