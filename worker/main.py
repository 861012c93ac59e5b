"""The worker process: ``phasescreen worker`` (or ``python -m worker.main``) runs the jobs layer's RQ loop."""

from __future__ import annotations

from jobs.rqworker import run_worker
from store import logs
from store.settings import ServiceSettings

__all__ = ["main", "run_worker"]


def main() -> None:
    settings = ServiceSettings()
    logs.configure(settings.log_level, settings.log_format)
    run_worker(settings)


if __name__ == "__main__":
    main()
