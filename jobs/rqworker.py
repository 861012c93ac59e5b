"""The RQ worker loop: one per GPU (pin it with CUDA_VISIBLE_DEVICES), non-forking.

``rq.SimpleWorker`` runs jobs in this process instead of a fork per job, so CUDA is initialised once and
the engine's loaded models stay in memory between jobs. The reconciler runs at start and periodically.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Sequence

from prometheus_client import start_http_server
from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from jobs.orphans import die_with_parent
from jobs.prometheus import REGISTRY
from jobs.reconcile import PeriodicReconciler, reconcile
from jobs.runner import open_runtime, set_runtime
from phasecore.errors import InvalidSettings
from phasecore.sources import resolve_device
from store.settings import ServiceSettings

log = logging.getLogger(__name__)
_forks_guarded: int | None = None  # the process whose forks are guarded


def _forks_die_with_this_process() -> None:
    """Processes forked from here from now on (RQ's scheduler: ``with_scheduler=True``) are killed when this
    worker dies (Linux; elsewhere nothing changes).

    A fork inherits the worker's open database sockets. When a worker was SIGKILLed (OOM killer, a node
    drain) its scheduler lived on, holding them open, so PostgreSQL never saw the dead worker's sessions end:
    a transaction it was in stayed open, and the rows it had locked blocked every other worker until their
    statement timeouts, job after job (``bench/chaos.py`` hung with 57 of 60 profiles queued)."""
    global _forks_guarded
    if _forks_guarded == os.getpid():  # once per process
        return
    parent = os.getpid()
    os.register_at_fork(after_in_child=lambda: die_with_parent(signal.SIGKILL, parent))
    _forks_guarded = parent


def run_worker(settings: ServiceSettings, *, burst: bool = False, queues: Sequence[str] = ()) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty). Returns whether any job ran."""
    if not settings.redis_url:
        raise SystemExit(
            "phasescreen worker needs PHASESCREEN_REDIS_URL; without Redis, `phasescreen serve` runs the "
            "jobs in-process"
        )
    try:  # a GPU worker that cannot see its GPU stops here, instead of failing (or crawling through) every job
        device = resolve_device(settings.device)
    except InvalidSettings as exc:
        raise SystemExit(f"phasescreen worker: PHASESCREEN_DEVICE={settings.device}: {exc}") from exc
    runtime = open_runtime(settings)
    set_runtime(runtime)  # the job functions receive only ids and find the runtime here
    log.info(
        "worker %s:%d on queue(s) %s, device %s (PHASESCREEN_DEVICE=%s), CUDA_VISIBLE_DEVICES=%s",
        socket.gethostname(),
        os.getpid(),
        ", ".join(queues or [settings.queue_name]),
        device,
        settings.device,
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
    )
    reconcile(runtime)
    periodic = None if burst else PeriodicReconciler(runtime, settings.reconcile_interval).start()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, registry=REGISTRY)
    # no socket timeout: the worker blocks on the queue for longer than any sensible timeout
    connection = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    worker_queues = [
        Queue(name, connection=connection, serializer=JSONSerializer) for name in (queues or [settings.queue_name])
    ]
    worker = SimpleWorker(worker_queues, connection=connection, serializer=JSONSerializer)
    _forks_die_with_this_process()
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())
    finally:
        if periodic is not None:
            periodic.stop()
        set_runtime(None)
        runtime.close()
        connection.close()
