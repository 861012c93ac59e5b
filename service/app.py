"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.reconcile import PeriodicReconciler, reconcile
from jobs.runner import open_runtime
from jobs.runtime import Runtime
from phasecore import ENGINE_VERSION
from phasecore.errors import PhasescreenError
from problems import PROBLEM_MEDIA_TYPE, Problem, ProblemDocument, from_domain_error, problem_document
from service import openapi
from service.deps import bind_path_ids, enforce_rate_limit
from service.prometheus import ApiMetrics, MetricsMiddleware
from service.proxies import TrustedProxies
from service.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from service.reports import ReportCache
from service.requestlog import RequestContext
from service.routes import batches, health, outcomes, profiles, screenings, study
from service.screenings import warm_request_checks
from service.settings import ApiSettings
from store import logs
from store.settings import ServiceSettings

log = logging.getLogger(__name__)
refusals = logging.getLogger("phasescreen.refusals")

_HTTP_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    413: "Request body too large",
    415: "Unsupported media type",
}


def create_app(
    settings: ServiceSettings | None = None, *, runtime: Runtime | None = None, freeze_after_startup: bool = False
) -> FastAPI:
    """The API. Without a runtime it makes one from ``settings`` (creating the embedded SQLite file and the
    in-process executor when no database or Redis is configured). The API's own settings (rate limits, proxies,
    ...: :class:`~service.settings.ApiSettings`) are ``settings``' when it has them, else read from the
    environment. ``freeze_after_startup``: the server process (``phasescreen serve``) moves what start-up built
    out of the garbage collector's sight (``gc.freeze``); not for a process that builds apps and throws them away,
    such as the tests."""
    settings = ApiSettings.of(settings or (runtime.settings if runtime else None))
    runtime = runtime or open_runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.request_threads = None  # made anew in this start's event loop (service.deps.in_request_thread)
        try:  # before the first request, not during it (an import holds every other request up)
            await run_in_threadpool(warm_request_checks)
        except Exception:
            log.warning("warming up the request checks failed; the first submission will", exc_info=True)
        # what start-up built (modules, the app, scikit-learn's digits: ~200,000 objects) lives as long as the
        # process: out of the collector's sight, a full collection takes ~0 ms instead of ~107 ms, a pause every
        # request in flight waited through (docs/benchmarks.md)
        if freeze_after_startup:
            gc.collect()
            gc.freeze()
        reconciler = None
        if settings.embedded_queue:  # no separate workers: this process recovers its own lost jobs
            try:
                reconcile(runtime)
            except Exception:
                log.warning("start-up reconciliation failed", exc_info=True)
            reconciler = PeriodicReconciler(runtime, settings.reconcile_interval).start()
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.stop()

    app = FastAPI(
        title="phasescreen",
        version=ENGINE_VERSION,
        description=(
            "Pre-screens vision-language model pairs with gradient metrics before GPU-days are spent "
            "aligning them. Submit a screening, poll it, read the result. Errors are RFC 9457 problem "
            "documents."
        ),
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.metrics = ApiMetrics(runtime)
    app.state.rate_limiter = _rate_limiter(settings)
    app.state.report_cache = ReportCache()

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=lambda: app.state.metrics)
    # request ids and the access line: inside TrustedProxies, so the client logged is the resolved one
    app.add_middleware(RequestContext)
    # outermost: every layer below (metrics, rate limits, logs) sees the client behind trusted proxies
    app.add_middleware(TrustedProxies, trusted=settings.trusted_proxies)
    _install_problem_handlers(app, settings)

    limited = [Depends(enforce_rate_limit), Depends(bind_path_ids)]
    app.include_router(screenings.router, dependencies=limited)
    app.include_router(outcomes.router, dependencies=limited)
    app.include_router(profiles.router, dependencies=limited)
    app.include_router(batches.router, dependencies=limited)
    app.include_router(study.router, dependencies=limited)
    app.include_router(health.router)
    openapi.install(app)
    return app


def _rate_limiter(settings: ServiceSettings) -> RateLimiter:
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, settings.queue_name)
    return MemoryRateLimiter()


def _problem_response(problem: ProblemDocument, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = logs.current("request_id")
    if request_id and problem.extension("request_id") is None:  # what to quote when reporting it: the logs have it
        problem = problem.model_copy(update={"request_id": request_id})
    if problem.status < 500:  # what was refused, and why (5xx are logged where they happen, with traces)
        refusals.info(
            "refused %d %s",
            problem.status,
            problem.kind,
            extra={"status": problem.status, "problem": problem.type, "detail": problem.detail},
        )
    return JSONResponse(problem.as_json(), status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _install_problem_handlers(app: FastAPI, settings: ApiSettings) -> None:
    """Every error leaves as application/problem+json; this is the one place that decides how."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return _problem_response(exc.document(request.url.path), exc.headers)

    @app.exception_handler(PhasescreenError)
    async def _domain(request: Request, exc: PhasescreenError) -> JSONResponse:
        return _problem_response(from_domain_error(exc).document(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            doc = problem_document(
                400,
                "malformed-json",
                "Malformed JSON",
                "the request body is not valid JSON",
                request.url.path,
            )
        else:
            summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
            doc = problem_document(
                422,
                "validation-error",
                "Invalid request",
                summary or "invalid request",
                request.url.path,
                errors=errors,
            )
        return _problem_response(doc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        kind = title.lower().replace(" ", "-")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 400 and detail == "There was an error parsing the body":  # FastAPI's words
            kind, title = "malformed-body", "Malformed request body"
            detail = "the request body could not be parsed as JSON (a number with over 4300 digits, bad encoding?)"
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only (POST of /v1/screenings
            # and not its GET); RFC 9110 wants every method the resource serves
            allowed = allowed_methods(request.app, request.scope)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not served here; this path serves {', '.join(allowed)}"
        return _problem_response(problem_document(exc.status_code, kind, title, detail, request.url.path), headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        log.warning("database error on %s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            doc = problem_document(
                503,
                "database-unavailable",
                "Database unavailable",
                "the database did not answer; the request was not completed, retry shortly",
                request.url.path,
            )
            return _problem_response(doc, {"Retry-After": str(settings.retry_after)})
        return _internal(request)

    @app.exception_handler(PoolTimeoutError)
    async def _pool_exhausted(request: Request, exc: PoolTimeoutError) -> JSONResponse:
        log.warning("no free database connection on %s %s: %s", request.method, request.url.path, exc)
        doc = problem_document(
            503,
            "database-busy",
            "Database busy",
            "every database connection of this server is in use; the request was not completed, retry shortly",
            request.url.path,
        )
        return _problem_response(doc, {"Retry-After": str(settings.retry_after)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _internal(request)


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """Every method served at ``scope``'s path, as the OpenAPI document lists them (HEAD with GET, as Starlette
    serves it), plus the undocumented routes' (/docs, /openapi.json); sorted."""
    table = getattr(app.state, "method_table", None)
    if table is None:
        table = []
        for path, item in app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$")
            methods = {method.upper() for method in item if method.upper() in _HTTP_METHODS}
            table.append((pattern, methods | ({"HEAD"} if "GET" in methods else set())))
        for route in app.router.routes:
            path_regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
            if path_regex is not None and route_methods:
                table.append((path_regex, set(route_methods)))
        app.state.method_table = table
    path = scope.get("path", "")
    return sorted({method for pattern, methods in table if pattern.match(path) for method in methods})


_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"})


def _internal(request: Request) -> JSONResponse:
    return _problem_response(
        problem_document(
            500,
            "internal-error",
            "Internal error",
            "the server failed to handle this request; it has been logged",
            request.url.path,
        )
    )


class BodySizeLimit:
    """Refuses request bodies above ``max_bytes`` with 413 before they reach a route (chunked ones too)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:  # buffered: the limit is small, and a route must never see half a body
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        doc = problem_document(
            413,
            "body-too-large",
            "Request body too large",
            f"the request body is larger than {self.max_bytes} bytes (PHASESCREEN_MAX_BODY_BYTES)",
            scope["path"],
        )
        await _problem_response(doc)(scope, receive, send)
