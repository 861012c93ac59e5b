"""FastAPI dependencies, as ``Annotated`` aliases so routes read as plain signatures."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from jobs.queue import JobQueue
from jobs.runtime import Runtime
from problems import Problem
from service.ratelimit import RateLimiter
from service.settings import ApiSettings
from store import logs
from store.apikeys import ANONYMOUS, Caller, KeyIdentity, authenticate, identity_of
from store.models import is_id


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


def json_response(model: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``model`` as FastAPI would send it for a route's ``response_model`` (the same bytes: pydantic's JSON by
    alias), serialised where it was built. A route that returns this skips FastAPI's second validation of its
    own return value, and a sync route its extra trip to the thread pool for that validation."""
    return Response(model.model_dump_json(by_alias=True), status_code, headers, media_type="application/json")


T = TypeVar("T")


async def in_request_thread(request: Request, function: Callable[..., T], *args: object) -> T:
    """``function(*args)``, blocking work of a few database or Redis round trips, in one of this process's
    PHASESCREEN_API_DB_THREADS request threads.

    Few threads, not the default pool of 40: with 40 threads contending for the GIL under load a GET cost 1.5
    ms of server CPU and its p99 was 230-260 ms, with 2 threads 1.2 ms and 80-90 ms (docs/benchmarks.md). The
    slow routes (reports, the study, batches) keep the default pool, so they never hold these up."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "request_threads", None)
    if limiter is None:  # created in the running event loop, once per application start
        limiter = anyio.CapacityLimiter(request.app.state.settings.api_db_threads)
        request.app.state.request_threads = limiter
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)


# plain attribute reads are async so FastAPI calls them on the event loop, not through the thread pool
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.runtime.queue
    return queue


def get_session(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    with runtime.session() as session:
        yield session


async def get_rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
SessionDep = Annotated[Session, Depends(get_session)]


def _presented_secret(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def client_host(request: Request) -> str:
    """The client's address (X-Forwarded-For is already resolved against the trusted proxies)."""
    return request.client.host if request.client else "unknown"


def _authenticate(runtime: Runtime, secret: str) -> KeyIdentity | None:
    with runtime.session() as session:
        key = authenticate(session, secret)
        return identity_of(key) if key is not None else None


def _check_key(
    runtime: Runtime, limiter: RateLimiter, secret: str, failures: str, limit: int
) -> tuple[float | None, KeyIdentity | None]:
    """(seconds to wait, None) when ``failures`` is throttled (the key is not looked up); else (None, the key),
    the key ``None`` when wrong, and then counted as a failure."""
    wait = limiter.peek(failures, limit)
    if wait is not None:
        return wait, None
    key = _authenticate(runtime, secret)
    if key is None:
        limiter.hit(failures, limit)
    return None, key


def _too_many(limit: int, wait: float, what: str) -> Problem:
    return Problem(
        429,
        "rate-limited",
        "Too many requests",
        f"more than {limit} {what} per minute; retry after {math.ceil(wait)} s",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


async def get_api_key(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    limiter: Annotated[RateLimiter, Depends(get_rate_limiter)],
) -> KeyIdentity | None:
    """The caller's key, ``None`` when none is presented; a wrong (unknown, revoked, expired) key is refused.

    Wrong keys are counted per client address: past PHASESCREEN_AUTH_FAILURES_PER_MINUTE the address gets
    429 before its key is even looked up, so guessing costs no database query."""
    secret = _presented_secret(request)
    if secret is None:  # the common anonymous read costs no thread hop and no database round trip
        return None
    failures = f"authfail:{client_host(request)}"
    limit = settings.auth_failures_per_minute
    # one trip to the thread pool: the address's failures (Redis), the key (database), a failure counted
    wait, key = await in_request_thread(request, _check_key, runtime, limiter, secret, failures, limit)
    if wait is not None:
        raise _too_many(limit, wait, "wrong API keys")
    if key is not None:
        logs.set_context(tenant=key.tenant)
    if key is None:
        raise Problem(
            401,
            "invalid-api-key",
            "Invalid API key",
            "the API key is unknown, revoked or expired; create one with `phasescreen apikey create`",
            headers={"WWW-Authenticate": 'Bearer realm="phasescreen"'},
        )
    return key


ApiKeyDep = Annotated[KeyIdentity | None, Depends(get_api_key)]


async def enforce_rate_limit(
    request: Request,
    api_key: ApiKeyDep,
    settings: SettingsDep,
    limiter: Annotated[RateLimiter, Depends(get_rate_limiter)],
) -> None:
    """Per-tenant limit (all keys of a tenant share it; per client address when anonymous); 429 with
    Retry-After when exceeded. A key's own limit replaces the deployment's."""
    limit = api_key.rate_limit_per_minute if api_key and api_key.rate_limit_per_minute else None
    limit = limit or settings.rate_limit_per_minute
    if not limit:
        return
    identity = f"tenant:{api_key.tenant}" if api_key else f"ip:{client_host(request)}"
    wait = await in_request_thread(request, limiter.hit, identity, limit)  # Redis I/O stays off the event loop
    if wait is not None:
        raise _too_many(limit, wait, "requests")


def _key_required(what: str) -> Problem:
    return Problem(
        401,
        "api-key-required",
        "API key required",
        f"this deployment requires an API key {what}: send `Authorization: Bearer <key>` "
        "(create one with `phasescreen apikey create`)",
        headers={"WWW-Authenticate": 'Bearer realm="phasescreen"'},
    )


def require_scope(scope: str) -> Callable[..., Coroutine[None, None, Caller]]:
    """A dependency: the caller, who needs a key with ``scope`` when PHASESCREEN_REQUIRE_API_KEY is on (a key
    presented without it is refused either way: 403)."""

    async def dependency(api_key: ApiKeyDep, settings: SettingsDep) -> Caller:
        if api_key is None:
            if settings.require_api_key:
                raise _key_required("for every /v1 request")
            return ANONYMOUS
        if scope not in api_key.scopes:
            raise Problem(
                403,
                "insufficient-scope",
                "Insufficient scope",
                f"this API key lacks the `{scope}` scope (it has: {', '.join(sorted(api_key.scopes)) or 'none'})",
            )
        return Caller(api_key, scoped=settings.require_api_key)

    return dependency


ReaderDep = Annotated[Caller, Depends(require_scope("read"))]
WriterDep = Annotated[Caller, Depends(require_scope("screen"))]
ReporterDep = Annotated[Caller, Depends(require_scope("report"))]


async def require_metrics_access(api_key: ApiKeyDep, settings: SettingsDep) -> None:
    """/metrics: open in anonymous mode (or with PHASESCREEN_METRICS_PUBLIC); else an `admin` key."""
    if not settings.require_api_key or settings.metrics_public:
        return
    if api_key is None:
        raise _key_required("with the `admin` scope for /metrics")
    if "admin" not in api_key.scopes:
        raise Problem(403, "insufficient-scope", "Insufficient scope", "/metrics needs a key with the `admin` scope")


async def bind_path_ids(request: Request) -> None:
    """The screening, batch or profile a request names in its path, in the logging context of the request."""
    for name in ("screening_id", "batch_id", "profile_id"):
        value = request.path_params.get(name)
        if isinstance(value, str) and is_id(value):
            logs.set_context(**{name: value})
