"""Fixtures of the service tests: a PostgreSQL database of their own built by the migrations, a Redis database
index of their own, and runtimes/apps/workers wired to them. Each test starts from empty tables and an
empty Redis database.

By default a test runs inside one PostgreSQL transaction that is rolled back after it: every runtime the test
makes (``runtime``, ``client``, ``make_runtime``) opens its sessions on that one connection, each session in a
savepoint (SQLAlchemy's ``join_transaction_mode="create_savepoint"``), so the code's own commits and
rollbacks work and nothing outlives the test. Tests whose writes must be seen by another connection are marked
``@pytest.mark.commits`` and get real commits on emptied tables instead (see :func:`clean`).

Override the targets with PHASESCREEN_TEST_DATABASE_URL and PHASESCREEN_TEST_REDIS_URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, MetaData, create_engine, make_url, text
from sqlalchemy.orm import sessionmaker

from jobs.runner import open_runtime
from jobs.runtime import Runtime
from service.settings import ApiSettings
from store.db import downgrade, upgrade
from store.models import Base
from store.settings import ServiceSettings
from tests.conftest import build_tiny_bert

PG_URL = os.environ.get(
    "PHASESCREEN_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/phasescreen_test"
)
REDIS_URL = os.environ.get("PHASESCREEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
REPO = Path(__file__).resolve().parents[2]

# Small real engine runs: a random-init timm test network and a random-init two-layer BERT (built below
# under the tests' model root) on 20 digits, with the cheapest settings. `test_offline_pretrained_pair`
# (slow) runs the pretrained offline packages instead.
VISION, LANGUAGE, DATASET = "timm:test_efficientnet?weights=random", "file:tiny-bert?weights=random", "digits"
TINY = {
    "n": 20,
    "probes": 1,
    "stability_steps": 1,
    "stability_subset": 4,
    "null_permutations": 20,
    "gt_folds": 2,
}


def tiny_request(**options: Any) -> dict[str, Any]:
    return {"vision": VISION, "language": LANGUAGE, "dataset": DATASET, "options": {**TINY, **options}}


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root with ``tiny-bert``: MiniLM's tokenizer and a 2-layer, 32-wide config (random init)."""
    return build_tiny_bert(tmp_path_factory.mktemp("models"))


def _ensure_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """Our own database, emptied and rebuilt by running the migrations (so every run tests them)."""
    try:
        _ensure_database(PG_URL)
    except Exception as exc:  # pragma: no cover - the CI script starts PostgreSQL
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc}")
    engine = create_engine(PG_URL)
    leftovers = MetaData()  # only our database: whatever an earlier run left there goes
    leftovers.reflect(engine)
    leftovers.drop_all(engine)
    engine.dispose()
    upgrade(PG_URL)
    downgrade(PG_URL, "base")  # the way down must work too
    upgrade(PG_URL)
    return PG_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    from redis import Redis

    try:
        Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(Base.metadata.tables)} CASCADE"))


def reset_scratch(database_url: str, redis_url: str) -> None:
    """A scratch database migrated to head with its tables emptied, and its Redis database flushed: the start
    of every run of ``bench/chaos.py`` and ``bench/faults.py``."""
    from redis import Redis

    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        _truncate(engine)
    finally:
        engine.dispose()
    Redis.from_url(redis_url).flushdb()


@pytest.fixture
def clean(pg_engine: Engine, redis_url: str, request: pytest.FixtureRequest) -> Iterator[Connection | None]:
    """The test's database state, and an empty Redis database (the tests' own index; FLUSHDB touches nothing
    else).

    Default: a connection in an open transaction, rolled back after the test (runtimes bind their sessions to
    it, :func:`make_runtime`); the tables are empty because every test leaves them so.

    ``@pytest.mark.commits``: ``None``, and the tables are emptied (TRUNCATE) before and after the test, whose
    sessions commit for real. For tests whose writes another connection must see: worker processes and
    ``work_burst`` (the worker opens its own runtime), API server or CLI subprocesses and in-process CLI calls
    that open their own engine, job or heartbeat threads and concurrent sessions (one connection cannot serve
    two threads at once; races and completions that lock each other need two transactions), the database cut
    through a proxy, a small pool exhausted on purpose, and anything that needs the database's clock to move
    (``now()`` is the start of the transaction, and a rolled-back test has one transaction)."""
    from redis import Redis

    Redis.from_url(redis_url).flushdb()
    if request.node.get_closest_marker("commits"):
        _truncate(pg_engine)
        yield None
        _truncate(pg_engine)
        return
    connection = pg_engine.connect()
    outer = connection.begin()
    try:
        yield connection
    finally:
        outer.rollback()
        connection.close()


@pytest.fixture
def make_settings(
    pg_url: str, redis_url: str, clean: Connection | None, tmp_path: Path, model_root: Path
) -> Callable[..., ServiceSettings]:
    queue = f"test-{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> ApiSettings:
        values: dict[str, Any] = {
            "home": tmp_path,
            "model_root": model_root,
            "database_url": pg_url,
            "redis_url": redis_url,
            "queue_name": queue,
            "auto_migrate": False,
            "lease_timeout": 30.0,
            "reconcile_grace": 0.0,
            "reconcile_interval": 3600.0,
            "retry_backoff": (0,),
            "rate_limit_per_minute": 0,
        }
        values.update(overrides)
        return ApiSettings(**values)

    return make


@pytest.fixture
def make_runtime(
    make_settings: Callable[..., ServiceSettings], clean: Connection | None
) -> Iterator[Callable[..., Runtime]]:
    """Runtimes of the test's settings (with ``overrides``); their sessions join the test's transaction unless
    the test is marked ``commits`` (:func:`clean`). Their engines stay real (``/readyz`` pings one)."""
    runtimes: list[Runtime] = []

    def make(**overrides: Any) -> Runtime:
        runtime = open_runtime(make_settings(**overrides))
        if clean is not None and "database_url" not in overrides:
            runtime.sessions = sessionmaker(
                bind=clean, join_transaction_mode="create_savepoint", expire_on_commit=False
            )
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(runtime=runtime)) as test_client:
        yield test_client


@pytest.fixture
def live_server(runtime) -> Iterator[str]:
    """The app on a real port (uvicorn in a thread), for the CLI's HTTP client."""
    import uvicorn

    from service.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(runtime=runtime), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="uvicorn")
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


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


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
