"""How this process runs jobs: the runtime it opens, and the functions RQ calls by name with only an id.

RQ's job functions receive an id (JSON serializer) and find the runtime of this process here: the worker
sets it at start (``set_runtime``); a bare ``rq worker`` opens one from the environment on first use.
"""

from __future__ import annotations

import threading

from jobs import functions
from jobs.runtime import Runtime
from store.settings import ServiceSettings

_current: Runtime | None = None
_current_lock = threading.Lock()


def open_runtime(settings: ServiceSettings) -> Runtime:
    """A runtime whose in-process executor (no Redis configured) runs jobs with this layer's job functions."""
    return Runtime.create(settings, run_job=functions.run_job)


def set_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one RQ job functions use in this process."""
    global _current
    with _current_lock:
        _current = runtime


def get_runtime() -> Runtime:
    global _current
    with _current_lock:
        if _current is None:
            _current = open_runtime(ServiceSettings())
        return _current


def run_profile_job(profile_id: str) -> str:
    """RQ's entry point for a profile job."""
    return functions.run_profile_job(profile_id, runtime=get_runtime())


def run_pair_job(screening_id: str) -> str:
    """RQ's entry point for a pair job."""
    return functions.run_pair_job(screening_id, runtime=get_runtime())
