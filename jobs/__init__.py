"""The job system: RQ queues, the jobs a worker runs, their lifecycle in the database and recovery."""
