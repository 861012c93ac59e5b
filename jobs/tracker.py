"""The progress callback handed to the engine, and the heartbeat that keeps a running job's lease.

The engine calls ``tracker(stage, fraction)`` between steps. The tracker writes progress to the database
(at most once a second, and at every new stage) and raises :class:`JobStopped` when the job must stop:
its lease was taken away (cancelled, or presumed lost and given to another worker), nobody needs the result
any more, or its time is up. The engine itself never learns about databases.

The lease is kept by the job's progress, not by the process being alive: the heartbeat renews it only while
the engine reported progress within PHASESCREEN_STALL_TIMEOUT, so a job hung in a native call that never
returns loses its lease and the reconciler requeues it. A watchdog thread then ends the process
(``runtime.exit_process``, ``os._exit`` in a worker) when no progress came for the stall timeout, or the job
outlived its deadline by a lease timeout without noticing; the process supervisor (or RQ) starts a fresh one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.orm import Session

from jobs import lifecycle, prometheus
from jobs.runtime import Runtime

log = logging.getLogger(__name__)

_WRITE_INTERVAL = 1.0
_HUNG_EXIT_CODE = 75  # EX_TEMPFAIL: the process supervisor restarts the worker


class JobStopped(Exception):  # noqa: N818 - a signal, not a fault
    """Raised inside the engine's progress callback to stop the job."""

    def __init__(self, reason: str, *, lease_lost: bool = False, shutting_down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lease_lost = lease_lost
        self.shutting_down = shutting_down


class JobTimedOut(Exception):  # noqa: N818 - named for what happened, like TimeoutError
    """The job ran past PHASESCREEN_JOB_TIMEOUT."""


class JobTracker:
    def __init__(
        self,
        runtime: Runtime,
        lease: lifecycle.Lease,
        *,
        kind: str,
        still_wanted: Callable[[Session], bool] | None = None,
    ) -> None:
        self._runtime = runtime
        self._lease = lease
        self._kind = kind
        self._still_wanted = still_wanted
        self._deadline = time.monotonic() + runtime.settings.job_timeout
        self._stop: JobStopped | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{lease.row_id}", daemon=True)
        self._watchdog = threading.Thread(target=self._watchdog_loop, name=f"watchdog-{lease.row_id}", daemon=True)
        self._last_progress = time.monotonic()
        self._stage: str | None = None
        self.durations: dict[str, float] = {}  # seconds per stage, for the metrics
        self._stage_started = time.monotonic()
        self._last_write = 0.0

    def __enter__(self) -> JobTracker:
        self._last_progress = time.monotonic()
        self._thread.start()
        self._watchdog.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._halt.set()
        self._thread.join(timeout=10)
        self._watchdog.join(timeout=10)
        self._close_stage()

    def check(self) -> None:
        """Raise if the job must stop; call between steps the engine does not report."""
        if self._stop is not None:
            raise self._stop
        if self._runtime.stopping.is_set():
            raise JobStopped("this process is shutting down", shutting_down=True)
        if time.monotonic() > self._deadline:
            raise JobTimedOut(
                f"the {self._kind} job ran longer than the limit of {self._runtime.settings.job_timeout} s "
                "(PHASESCREEN_JOB_TIMEOUT); use a smaller n or fewer probes, or raise the limit"
            )

    def __call__(self, stage: str, fraction: float) -> None:
        self.check()
        now = time.monotonic()
        self._last_progress = now
        new_stage = stage != self._stage
        if new_stage:
            self._close_stage()
            self._stage, self._stage_started = stage, now
        if new_stage or now - self._last_write >= _WRITE_INTERVAL:
            self._last_write = now
            self._write(stage, fraction)

    def _close_stage(self) -> None:
        if self._stage is not None:
            elapsed = time.monotonic() - self._stage_started
            prometheus.STAGE_SECONDS.labels(self._kind, self._stage).observe(elapsed)
            self.durations[self._stage] = self.durations.get(self._stage, 0.0) + elapsed
            self._stage = None

    def _write(self, stage: str, fraction: float) -> None:
        try:
            with self._runtime.session() as session:
                held = lifecycle.record_progress(session, self._lease, stage, float(fraction))
                session.commit()
        except Exception:  # a database blip must not kill a long computation; the heartbeat retries
            log.warning("could not record progress of %s %s", self._kind, self._lease.row_id, exc_info=True)
            return
        if not held:
            self._stop = JobStopped("the job was cancelled or handed to another worker", lease_lost=True)
            raise self._stop

    def stalled_for(self) -> float:
        """Seconds since the engine last reported progress."""
        return time.monotonic() - self._last_progress

    def _heartbeat_loop(self) -> None:
        interval = self._runtime.settings.heartbeat_interval
        while not self._halt.wait(interval):
            if self.stalled_for() > self._runtime.settings.stall_timeout:
                continue  # a hung job's lease runs out; the reconciler hands the row to another worker
            try:
                with self._runtime.session() as session:
                    held = lifecycle.renew_lease(session, self._lease)
                    wanted = held and (self._still_wanted is None or self._still_wanted(session))
                    session.commit()
            except Exception:
                log.warning("heartbeat of %s %s failed", self._kind, self._lease.row_id, exc_info=True)
                continue
            if not held:
                self._stop = JobStopped("the job was cancelled or handed to another worker", lease_lost=True)
            elif not wanted:
                self._stop = JobStopped("every screening waiting for this job was cancelled")
            if self._stop is not None:
                return

    def _watchdog_loop(self) -> None:
        settings = self._runtime.settings
        while not self._halt.wait(min(1.0, settings.stall_timeout / 4)):
            stalled = self.stalled_for()
            overdue = time.monotonic() - self._deadline
            if stalled <= settings.stall_timeout and overdue <= settings.lease_timeout:
                continue
            why = (
                f"no progress for {stalled:.0f} s (PHASESCREEN_STALL_TIMEOUT={settings.stall_timeout:g})"
                if stalled > settings.stall_timeout
                else f"{overdue:.0f} s past its deadline (PHASESCREEN_JOB_TIMEOUT={settings.job_timeout})"
            )
            prometheus.FAILURES.labels(self._kind, "stalled").inc()
            exit_process = self._runtime.exit_process
            if exit_process is None:
                log.error("%s job %s is hung: %s; its lease runs out", self._kind, self._lease.row_id, why)
                return
            log.critical(
                "%s job %s is hung: %s; ending this worker process so that a fresh one takes over",
                self._kind,
                self._lease.row_id,
                why,
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            exit_process(_HUNG_EXIT_CODE)
            return
