"""Job submission: RQ on Redis in the service deployment, a bounded thread pool when embedded.

The queue only carries ids (the job id *is* the screening's or profile's id); the database holds the truth,
so enqueueing twice is harmless: a job that finds its row already claimed or finished does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from rq.job import Job

log = logging.getLogger(__name__)

JobKind = Literal["profile", "pair"]
JOB_FUNCTIONS: dict[str, str] = {"profile": "jobs.runner.run_profile_job", "pair": "jobs.runner.run_pair_job"}


@dataclass(frozen=True)
class JobRef:
    kind: JobKind
    id: str


class JobQueue(Protocol):
    def enqueue(self, job: JobRef) -> None:
        """Submit ``job`` unless it is already waiting or running."""

    def requeue(self, job: JobRef) -> None:
        """Submit ``job`` afresh, dropping what the queue still holds under its id (a lost worker's job)."""

    def is_pending(self, job_id: str) -> bool:
        """Whether the queue holds ``job_id`` as waiting, scheduled or started."""

    def is_waiting(self, job_id: str) -> bool:
        """Whether the queue holds ``job_id`` as waiting to start (queued, scheduled or deferred), not started."""

    def depth(self) -> int:
        """Jobs waiting to start."""

    def ping(self) -> None:
        """Raise unless the queue is reachable."""

    def close(self) -> None: ...


class RedisJobQueue:
    """RQ queue with the JSON serializer; jobs are retried by RQ with the configured backoff."""

    _PENDING = ("queued", "started", "scheduled", "deferred")
    _WAITING = ("queued", "scheduled", "deferred")

    def __init__(
        self,
        redis_url: str,
        queue_name: str,
        *,
        job_timeout: int,
        max_attempts: int,
        retry_backoff: tuple[int, ...],
    ) -> None:
        from redis import Redis
        from rq import Queue, Retry
        from rq.serializers import JSONSerializer

        self.redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
        # the hard RQ timeout backs up the job's own deadline, which fails it with a clearer message
        self.queue = Queue(
            queue_name, connection=self.redis, serializer=JSONSerializer, default_timeout=job_timeout + 60
        )
        self._retry = Retry(max=max_attempts - 1, interval=list(retry_backoff or (0,))) if max_attempts > 1 else None

    def _submit(self, job: JobRef) -> None:
        self.queue.enqueue_call(
            JOB_FUNCTIONS[job.kind],
            args=[job.id],
            job_id=job.id,
            retry=self._retry,
            result_ttl=3600,
            failure_ttl=7 * 86400,
            description=f"{job.kind} {job.id}",
            unique=True,
        )

    def _fetch(self, job_id: str) -> Job | None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            return Job.fetch(job_id, connection=self.redis, serializer=self.queue.serializer)
        except NoSuchJobError:
            return None

    def enqueue(self, job: JobRef) -> None:
        from rq.exceptions import DuplicateJobError

        try:
            self._submit(job)
            return
        except DuplicateJobError:
            existing = self._fetch(job.id)
            if existing is not None and existing.get_status(refresh=False) in self._PENDING:
                return
            if existing is not None:  # a finished or failed run of the same id: replace it
                existing.delete(remove_from_queue=True)
        with contextlib.suppress(DuplicateJobError):  # a concurrent submitter won; its job is as good
            self._submit(job)

    def requeue(self, job: JobRef) -> None:
        existing = self._fetch(job.id)
        if existing is not None:
            existing.delete(remove_from_queue=True)
        self.enqueue(job)

    def is_pending(self, job_id: str) -> bool:
        existing = self._fetch(job_id)
        return existing is not None and existing.get_status(refresh=False) in self._PENDING

    def is_waiting(self, job_id: str) -> bool:
        existing = self._fetch(job_id)
        if existing is None:
            return False
        status = existing.get_status(refresh=False)
        if status == "queued":  # RQ's status can outlive a dequeue; the queue's list is what a worker takes
            return self._listed(job_id)
        return status in self._WAITING

    def _listed(self, job_id: str) -> bool:
        from redis.exceptions import ResponseError

        try:  # LPOS (Redis 6.0.6+): one scan on the server, not the whole list over the wire
            return self.redis.lpos(self.queue.key, job_id) is not None
        except ResponseError:
            return job_id in self.queue.get_job_ids()

    def depth(self) -> int:
        return int(self.queue.count)

    def ping(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()


class InProcessJobQueue:
    """A bounded thread pool running the same job functions inside this process (the embedded default)."""

    def __init__(
        self,
        runner: Callable[[JobRef], None],
        *,
        workers: int,
        max_attempts: int,
        retry_backoff: tuple[int, ...],
    ) -> None:
        self._runner = runner
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phasescreen-job")
        self._max_attempts = max_attempts
        self._backoff = retry_backoff or (0,)
        self._lock = threading.Lock()
        self._pending: dict[str, bool] = {}  # job id -> started
        self._failures: dict[str, int] = {}
        self._timers: set[threading.Timer] = set()
        self._closed = False

    def enqueue(self, job: JobRef) -> None:
        with self._lock:
            if self._closed or job.id in self._pending:
                return
            self._pending[job.id] = False
        self._executor.submit(self._run, job)

    requeue = enqueue

    def _run(self, job: JobRef) -> None:
        with self._lock:
            self._pending[job.id] = True
        try:
            self._runner(job)
            retry = False
        except Exception:  # the job asked for a retry by raising; the database row says what happened
            log.exception("job %s %s raised; it will be retried if attempts remain", job.kind, job.id)
            retry = True
        with self._lock:
            self._pending.pop(job.id, None)
            failures = self._failures.pop(job.id, 0) + 1
            if retry and failures < self._max_attempts and not self._closed:
                self._failures[job.id] = failures
                delay = self._backoff[min(failures - 1, len(self._backoff) - 1)]
                timer = threading.Timer(delay, self._retry, args=(job,))
                timer.daemon = True
                self._timers.add(timer)
                timer.start()

    def _retry(self, job: JobRef) -> None:
        with self._lock:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
        self.enqueue(job)

    def is_pending(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._pending

    def is_waiting(self, job_id: str) -> bool:
        with self._lock:
            return self._pending.get(job_id) is False

    def depth(self) -> int:
        with self._lock:
            return sum(1 for started in self._pending.values() if not started)

    def ping(self) -> None:
        if self._closed:
            raise RuntimeError("the in-process executor is shut down")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for timer in self._timers:
                timer.cancel()
        # running jobs notice nothing; they finish or are reconciled as lost on the next start
        self._executor.shutdown(wait=False, cancel_futures=True)
