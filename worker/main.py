"""The worker process: ``phasescreen worker`` (or ``python -m worker.main``) runs the jobs layer's RQ loop."""

from __future__ import annotations

import logging

from jobs.rqworker import run_worker
from store.settings import ServiceSettings

__all__ = ["main", "run_worker"]


def main() -> None:
    settings = ServiceSettings()
    logging.basicConfig(level=settings.log_level.upper())
    run_worker(settings)


if __name__ == "__main__":
    main()
