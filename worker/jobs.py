"""RQ entry points under the names older releases enqueued (``worker.jobs.run_*_job``), so jobs that wait in
Redis across an upgrade still run. New jobs are enqueued as ``jobs.runner.run_*_job``."""

from jobs.runner import run_pair_job, run_profile_job

__all__ = ["run_pair_job", "run_profile_job"]
