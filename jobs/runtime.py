"""What a process needs to serve or run screenings: settings, a database engine and a job queue.

The runtime does not know the job functions: whoever opens one for the in-process executor passes the
function that runs a job (``jobs.runner.open_runtime`` does), so this module stays below them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobs.queue import InProcessJobQueue, JobQueue, JobRef, RedisJobQueue
from store.db import make_engine, make_sessionmaker, upgrade
from store.settings import ServiceSettings

JobRunner = Callable[["Runtime", JobRef], None]


@dataclass(eq=False)  # identity semantics: a runtime is a process resource, hashable for per-runtime caches
class Runtime:
    settings: ServiceSettings
    engine: Engine
    sessions: sessionmaker[Session]
    queue: JobQueue = field(init=False)
    # set by close(): jobs running in this process stop at their next progress report and hand their row back
    stopping: threading.Event = field(default_factory=threading.Event)
    # what a job's watchdog calls when the job hangs (no progress for PHASESCREEN_STALL_TIMEOUT): os._exit in a
    # worker process (RQ's or the supervisor's restart gives a fresh one); None where jobs run inside the API
    # process (embedded), which must not die with one job: there the stalled job only loses its lease
    exit_process: Callable[[int], object] | None = None

    @classmethod
    def create(cls, settings: ServiceSettings, *, run_job: JobRunner) -> Runtime:
        """Migrate (when asked), connect, and open the queue: Redis when configured, else a bounded thread pool
        that runs each job with ``run_job(runtime, job)`` in this process."""
        if settings.should_migrate:
            upgrade(settings.sqlalchemy_url)
        engine = make_engine(settings.sqlalchemy_url, settings=settings)
        runtime = cls(settings, engine, make_sessionmaker(engine))
        if settings.redis_url:
            runtime.exit_process = os._exit  # only a worker process runs jobs of a Redis queue
            runtime.queue = RedisJobQueue(
                settings.redis_url,
                settings.queue_name,
                job_timeout=settings.job_timeout,
                max_attempts=settings.max_attempts,
                retry_backoff=settings.retry_backoff,
            )
        else:
            runtime.queue = InProcessJobQueue(
                functools.partial(run_job, runtime),
                workers=settings.embedded_workers,
                max_attempts=settings.max_attempts,
                retry_backoff=settings.retry_backoff,
            )
        return runtime

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    def close(self) -> None:
        self.stopping.set()
        self.queue.close()
        self.engine.dispose()
