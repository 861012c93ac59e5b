"""FastAPI dependencies, as ``Annotated`` aliases so routes read as plain signatures."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from jobs.queue import JobQueue
from jobs.runtime import Runtime
from service.ratelimit import RateLimiter
from store.apikeys import authenticate
from store.models import ApiKey
from store.problems import Problem
from store.settings import ServiceSettings


def checked_idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header of a POST that creates something (a screening, a batch)."""
    if value is None:
        return None
    if not value or len(value) > 255 or not value.isprintable() or not value.isascii():
        raise Problem(
            400,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters (a UUID will do)",
        )
    return value


# plain attribute reads are async so FastAPI calls them on the event loop, not through the thread pool
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.runtime.settings


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.runtime.queue


def get_session(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    with runtime.session() as session:
        yield session


async def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
SessionDep = Annotated[Session, Depends(get_session)]


def _presented_secret(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def _authenticate(runtime: Runtime, secret: str) -> ApiKey | None:
    with runtime.session() as session:
        return authenticate(session, secret)


async def get_api_key(request: Request, runtime: RuntimeDep) -> ApiKey | None:
    """The caller's key, ``None`` when none is presented; a wrong key is always refused."""
    secret = _presented_secret(request)
    if secret is None:  # the common anonymous read costs no thread hop and no database round trip
        return None
    key = await run_in_threadpool(_authenticate, runtime, secret)
    if key is None:
        raise Problem(
            401,
            "invalid-api-key",
            "Invalid API key",
            "the API key is unknown or revoked; create one with `phasescreen apikey create`",
            headers={"WWW-Authenticate": 'Bearer realm="phasescreen"'},
        )
    return key


ApiKeyDep = Annotated[ApiKey | None, Depends(get_api_key)]


async def enforce_rate_limit(
    request: Request,
    api_key: ApiKeyDep,
    settings: SettingsDep,
    limiter: Annotated[RateLimiter, Depends(get_rate_limiter)],
) -> None:
    """Per-key limit (or per client address when anonymous); 429 with Retry-After when exceeded."""
    limit = api_key.rate_limit_per_minute if api_key and api_key.rate_limit_per_minute else None
    limit = limit or settings.rate_limit_per_minute
    if not limit:
        return
    identity = f"key:{api_key.id}" if api_key else f"ip:{request.client.host if request.client else 'unknown'}"
    wait = await run_in_threadpool(limiter.hit, identity, limit)  # Redis I/O stays off the event loop
    if wait is not None:
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"more than {limit} requests per minute; retry after {math.ceil(wait)} s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


async def require_writer(api_key: ApiKeyDep, settings: SettingsDep) -> ApiKey | None:
    """Writes need a key when PHASESCREEN_REQUIRE_API_KEY is on."""
    if settings.require_api_key and api_key is None:
        raise Problem(
            401,
            "api-key-required",
            "API key required",
            "this deployment requires an API key for writes: send `Authorization: Bearer <key>` "
            "(create one with `phasescreen apikey create`)",
            headers={"WWW-Authenticate": 'Bearer realm="phasescreen"'},
        )
    return api_key


WriterDep = Annotated[ApiKey | None, Depends(require_writer)]
