"""Settings only the HTTP API reads: its threads, rate limits, proxies, /metrics, body size and polling advice.

``ApiSettings`` is the deployment's :class:`~store.settings.ServiceSettings` with these added, so one object
opens the API's runtime and configures its middleware; the variables are documented with the others in
docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from store.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    """The deployment's settings and those of the HTTP API (``phasescreen serve``)."""

    api_db_threads: int = Field(
        2,
        ge=1,
        le=256,
        description="threads of each API process that run the short database and Redis work of submitting and "
        "reading screenings and of checking keys and rate limits (slower routes use the default thread pool)",
    )
    rate_limit_per_minute: int = Field(
        120, ge=0, description="requests per minute per tenant (or client address when anonymous); 0 = off"
    )
    auth_failures_per_minute: int = Field(
        10, ge=1, description="wrong API keys per minute per client address before 429"
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="addresses/networks of reverse proxies whose X-Forwarded-For is believed (comma-separated)"
    )
    metrics_public: bool = Field(
        False, description="serve /metrics without an admin key even when keys are required"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest request body accepted")
    retry_after: int = Field(5, ge=1, description="seconds clients are told to wait before polling")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            for entry in value:
                ipaddress.ip_network(str(entry), strict=False)  # ValueError names the bad entry
        return value

    @classmethod
    def of(cls, settings: ServiceSettings | None = None) -> ApiSettings:
        """``settings`` with the API's own settings added from the environment (``ApiSettings()`` when
        ``None``; ``settings`` itself when it has them already)."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        return cls(**{name: getattr(settings, name) for name in ServiceSettings.model_fields})
