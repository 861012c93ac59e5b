"""Prometheus metrics of the API: requests and latencies by route, queue depth, screenings by state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.prometheus import REGISTRY as JOB_REGISTRY
from jobs.runtime import Runtime
from store.jobstats import stage_totals
from store.models import FAILED, Screening
from store.retention import blob_totals

log = logging.getLogger(__name__)


class _StateCollector(Collector):
    """Gauges read at scrape time: queue depth and screenings per state (from the database, the truth)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("phasescreen_queue_depth", "Jobs waiting in the queue")
        try:
            depth.add_metric([], self._runtime.queue.depth())
            yield depth
        except Exception:
            log.debug("queue depth unavailable", exc_info=True)
        states = GaugeMetricFamily("phasescreen_screenings", "Screenings by state", labels=["state"])
        failures = GaugeMetricFamily(
            "phasescreen_failed_screenings", "Failed screenings by problem type", labels=["problem"]
        )
        stages = SummaryMetricFamily(
            "phasescreen_stage_duration_seconds",
            "Time spent in each stage of finished jobs, all workers (from the database)",
            labels=["kind", "stage"],
        )
        try:
            with self._runtime.session() as session:
                by_state = session.execute(select(Screening.state, func.count()).group_by(Screening.state)).all()
                problem_type = Screening.problem["type"].as_string()
                by_problem = session.execute(
                    select(problem_type, func.count()).where(Screening.state == FAILED).group_by(problem_type)
                ).all()
                totals = stage_totals(session)
                blobs, blob_bytes = blob_totals(session)
        except Exception:
            log.debug("database metrics unavailable", exc_info=True)
            return
        for state, count in by_state:
            states.add_metric([state], count)
        for kind, count in by_problem:
            failures.add_metric([(kind or "unknown").rsplit(":", 1)[-1]], count)
        for kind, stage, count, seconds in totals:
            stages.add_metric([kind, stage], count_value=count, sum_value=seconds)
        stored = GaugeMetricFamily(
            "phasescreen_profile_blob_bytes", "Bytes of the model profiles' stored arrays (phasescreen db prune)"
        )
        stored.add_metric([], blob_bytes)
        stored_count = GaugeMetricFamily("phasescreen_profile_blobs", "Model profiles holding stored arrays")
        stored_count.add_metric([], blobs)
        yield from (states, failures, stages, stored, stored_count)


class ApiMetrics:
    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "phasescreen_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "phasescreen_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry.register(_StateCollector(runtime))

    def render(self) -> bytes:
        # with the embedded executor the jobs run in this process: their counters are served here too
        return generate_latest(self.registry) + generate_latest(JOB_REGISTRY)


# every other method (WebDAV verbs, made-up ones) shares one label, as every unmatched path does
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"


def bounded_labels(scope: Scope) -> tuple[str, str]:
    """(method, route) labels from a finite set: the route's template, never the raw path."""
    method = scope.get("method", "")
    route = scope.get("route")
    template = getattr(route, "path", None) or UNMATCHED
    return (method if method in KNOWN_METHODS else "OTHER"), template


class MetricsMiddleware:
    """Times every request, labelled by route template (``/v1/screenings/{screening_id}``): few series."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], ApiMetrics | None]) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = self._metrics()
            if metrics is not None:
                method, template = bounded_labels(scope)
                metrics.requests.labels(method, template, str(status)).inc()
                metrics.latency.labels(method, template).observe(time.perf_counter() - started)
