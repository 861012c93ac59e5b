"""Liveness, readiness and metrics (outside /v1: no rate limit; /metrics needs an admin key when keys are
required)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from phasecore import ENGINE_VERSION
from problems import PROBLEM_MEDIA_TYPE, problem_document
from service.deps import RuntimeDep, SettingsDep, require_metrics_access
from store.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the database or the queue)."""
    return {"status": "ok", "engine_version": ENGINE_VERSION}


@router.get(
    "/readyz",
    responses={503: {"description": "database or queue unreachable", "content": {PROBLEM_MEDIA_TYPE: {}}}},
)
def readyz(runtime: RuntimeDep, settings: SettingsDep) -> Any:
    """Ready to serve: the database and the queue answer; otherwise 503 with what failed."""
    checks: dict[str, str] = {}
    probes: tuple[tuple[str, Callable[[], None]], ...] = (
        ("database", lambda: ping(runtime.engine)),
        ("queue", runtime.queue.ping),
    )
    for name, probe in probes:
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    if all(value == "ok" for value in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return JSONResponse(
        problem_document(503, "not-ready", "Not ready", f"unreachable: {failing}", checks=checks).as_json(),
        status_code=503,
        media_type=PROBLEM_MEDIA_TYPE,
        headers={"Retry-After": str(settings.retry_after)},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    dependencies=[Depends(require_metrics_access)],
)
def metrics(request: Request) -> Response:
    """Prometheus text: requests, latencies, queue depth, screenings by state, job durations by stage. With keys
    required, only for a key with the `admin` scope (Prometheus: `authorization: {credentials: <key>}`)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
