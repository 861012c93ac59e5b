"""Helpers of the tests against the real service stack (the fixtures that use them live in tests/conftest.py):
the PostgreSQL and Redis targets, the tiny screening request, the real worker run in this process or as a child
process, waiting on a condition, and the problem documents the API answers.

Override the targets with PHASESCREEN_TEST_DATABASE_URL and PHASESCREEN_TEST_REDIS_URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

from store.db import upgrade
from store.models import Base
from store.settings import ServiceSettings

PG_URL = os.environ.get(
    "PHASESCREEN_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/phasescreen_test"
)
REDIS_URL = os.environ.get("PHASESCREEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
REPO = Path(__file__).resolve().parents[2]

# Small real engine runs: a random-init timm test network and a random-init two-layer BERT (built by the
# `model_root` fixture under the tests' model root) on 20 digits, with the cheapest settings.
# `test_offline_pretrained_pair` (slow) runs the pretrained offline packages instead.
VISION, LANGUAGE, DATASET = "timm:test_efficientnet?weights=random", "file:tiny-bert?weights=random", "digits"
TINY = {
    "n": 20,
    "probes": 1,
    "stability_steps": 1,
    "stability_subset": 4,
    "null_permutations": 20,
    "gt_folds": 2,
}

PROBLEM = "application/problem+json"


def tiny_request(**options: Any) -> dict[str, Any]:
    return {"vision": VISION, "language": LANGUAGE, "dataset": DATASET, "options": {**TINY, **options}}


def assert_problem(response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    doc = response.json()
    assert doc["status"] == status and doc["title"] and doc["detail"]
    if kind:
        assert doc["type"].endswith(":" + kind), doc
    return doc


def ensure_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(Base.metadata.tables)} CASCADE"))


def reset_scratch(database_url: str, redis_url: str) -> None:
    """A scratch database migrated to head with its tables emptied, and its Redis database flushed: the start
    of every run of ``bench/chaos.py`` and ``bench/faults.py``."""
    from redis import Redis

    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        truncate(engine)
    finally:
        engine.dispose()
    Redis.from_url(redis_url).flushdb()


def work_burst(settings: ServiceSettings) -> bool:
    """Run the real worker entry point in this process until the queue is empty."""
    from worker.main import run_worker

    return run_worker(settings, burst=True)


def worker_env(settings: ServiceSettings) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(f"PHASESCREEN_{name.upper()}", None)
        elif isinstance(value, tuple):
            env[f"PHASESCREEN_{name.upper()}"] = ",".join(str(v) for v in value)
        else:
            env[f"PHASESCREEN_{name.upper()}"] = str(value)
    return env


def start_worker_process(settings: ServiceSettings, *args: str, log: Path) -> subprocess.Popen:
    """``phasescreen worker`` as a child process (so that it can be killed)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "worker", *args],
        cwd=REPO,
        env=worker_env(settings),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (``pgrep -P``)."""
    listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in listed]


def exited(pid: int) -> bool:
    """Process ``pid`` has ended: gone, or a zombie (its files, sockets included, are closed). Linux /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
