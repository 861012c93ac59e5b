"""What a process needs to serve or run screenings: settings, a database engine and a job queue."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker, upgrade
from service.queue import InProcessJobQueue, JobQueue, JobRef, RedisJobQueue
from service.settings import ServiceSettings


@dataclass(eq=False)  # identity semantics: a runtime is a process resource, hashable for per-runtime caches
class Runtime:
    settings: ServiceSettings
    engine: Engine
    sessions: sessionmaker[Session]
    queue: JobQueue = field(init=False)
    # set by close(): jobs running in this process stop at their next progress report and hand their row back
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, settings: ServiceSettings) -> Runtime:
        if settings.should_migrate:
            upgrade(settings.sqlalchemy_url)
        engine = make_engine(settings.sqlalchemy_url, settings=settings)
        runtime = cls(settings, engine, make_sessionmaker(engine))
        if settings.redis_url:
            runtime.queue = RedisJobQueue(
                settings.redis_url,
                settings.queue_name,
                job_timeout=settings.job_timeout,
                max_attempts=settings.max_attempts,
                retry_backoff=settings.retry_backoff,
            )
        else:
            runtime.queue = InProcessJobQueue(
                runtime.run_job,
                workers=settings.embedded_workers,
                max_attempts=settings.max_attempts,
                retry_backoff=settings.retry_backoff,
            )
        return runtime

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    def run_job(self, job: JobRef) -> None:
        """Run one job in this process (the in-process executor's runner)."""
        from worker import jobs  # the service sits above the worker; imported here to keep start-up light

        run = jobs.run_profile_job if job.kind == "profile" else jobs.run_pair_job
        run(job.id, runtime=self)

    def close(self) -> None:
        self.stopping.set()
        self.queue.close()
        self.engine.dispose()


_current: Runtime | None = None
_current_lock = threading.Lock()


def set_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one RQ job functions use in this process (they receive only an id)."""
    global _current
    with _current_lock:
        _current = runtime


def get_runtime() -> Runtime:
    global _current
    with _current_lock:
        if _current is None:
            _current = Runtime.create(ServiceSettings())
        return _current
