"""Job metrics of this process. The API's /metrics includes them (embedded mode runs jobs in the API
process); a worker serves them on PHASESCREEN_WORKER_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

JOB_SECONDS = Histogram(
    "phasescreen_job_duration_seconds",
    "Wall time of a job, by kind and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
    buckets=_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "phasescreen_job_stage_duration_seconds",
    "Wall time of one stage of a job",
    ["kind", "stage"],
    registry=REGISTRY,
    buckets=_BUCKETS,
)
JOBS = Counter("phasescreen_jobs", "Jobs run, by kind and outcome", ["kind", "outcome"], registry=REGISTRY)
FAILURES = Counter(
    "phasescreen_job_failures",
    "Jobs that failed or will be retried, by kind and problem type",
    ["kind", "problem"],
    registry=REGISTRY,
)
RECONCILED = Counter(
    "phasescreen_reconciled", "Rows the reconciler re-enqueued or failed", ["action"], registry=REGISTRY
)
FINAL_WRITE_RETRIES = Counter(
    "phasescreen_final_write_retries",
    "Final writes of finished jobs tried again because the database was unreachable",
    registry=REGISTRY,
)
