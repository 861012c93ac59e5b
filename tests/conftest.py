"""The fixtures the test folders share (their helpers live in tests/helpers/).

The tiny batch, for the batch, gate and report tests: one real 2 × 2 batch of small random-init models
(tests/helpers/tiny.py), run once per session through `phasescreen batch` (embedded default), whose profile cache
later tests reuse: four profiles of a few seconds each.

The service stack, for the tests of the service, the jobs, the store, the worker and `phasescreen serve`: a
PostgreSQL database of their own built by the migrations, a Redis database index of their own, and
runtimes/apps/workers wired to them. Each test starts from empty tables and an empty Redis database.

By default a test runs inside one PostgreSQL transaction that is rolled back after it: every runtime the test
makes (``runtime``, ``client``, ``make_runtime``) opens its sessions on that one connection, each session in a
savepoint (SQLAlchemy's ``join_transaction_mode="create_savepoint"``), so the code's own commits and
rollbacks work and nothing outlives the test. Tests whose writes must be seen by another connection are marked
``@pytest.mark.commits`` and get real commits on emptied tables instead (see :func:`clean`).

Override the targets with PHASESCREEN_TEST_DATABASE_URL and PHASESCREEN_TEST_REDIS_URL (tests/helpers/services.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, MetaData, create_engine
from sqlalchemy.orm import sessionmaker

from jobs.runner import open_runtime
from jobs.runtime import Runtime
from service.settings import ApiSettings
from store.db import downgrade, upgrade
from store.settings import ServiceSettings
from tests.helpers.services import PG_URL, REDIS_URL, ensure_database, truncate, wait_for
from tests.helpers.tiny import build_tiny_bert, write_grid

# The tests never read the evidence file the package ships (`make evidence` writes it, and its figures would
# change what results say): those that need shipped evidence write their own and point this at it. A path
# under /dev/null never exists. Subprocesses inherit it.
os.environ["PHASESCREEN_EVIDENCE_PATH"] = "/dev/null/no-shipped-evidence-in-tests.json"


# --- the tiny batch ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models"))


@dataclass(frozen=True)
class TinyBatch:
    grid: Path
    results: Path
    csv: Path
    cache_dir: Path
    home: Path
    model_root: Path
    exit_code: int
    printed: str

    def document(self) -> dict:
        return json.loads(self.results.read_text())


@pytest.fixture(scope="session")
def tiny_batch(tmp_path_factory: pytest.TempPathFactory, tiny_model_root: Path) -> TinyBatch:
    """`phasescreen batch` on the tiny 2 × 2 grid, embedded (profiles computed here, results stored locally)."""
    from cli import main

    tmp = tmp_path_factory.mktemp("tiny-batch")
    grid = write_grid(tmp / "tiny.yaml")
    results, csv, cache_dir, home = tmp / "tiny.results.json", tmp / "tiny.csv", tmp / "profiles", tmp / "home"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(printed):
        env.setenv("PHASESCREEN_MODEL_ROOT", str(tiny_model_root))
        env.setenv("PHASESCREEN_HOME", str(home))
        for name in ("PHASESCREEN_DATABASE_URL", "PHASESCREEN_REDIS_URL", "PHASESCREEN_SERVER"):
            env.delenv(name, raising=False)
        argv = ["batch", str(grid), "--output", str(results), "--csv", str(csv), "--cache-dir", str(cache_dir), "-q"]
        code = main(argv)
    return TinyBatch(grid, results, csv, cache_dir, home, tiny_model_root, code, printed.getvalue())


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, tiny_model_root: Path, tmp_path: Path) -> Path:
    """An embedded environment of its own (empty local database under tmp_path) that finds the tiny models."""
    monkeypatch.setenv("PHASESCREEN_MODEL_ROOT", str(tiny_model_root))
    monkeypatch.setenv("PHASESCREEN_HOME", str(tmp_path / "home"))
    for name in ("PHASESCREEN_DATABASE_URL", "PHASESCREEN_REDIS_URL", "PHASESCREEN_SERVER", "PHASESCREEN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


# --- the service stack: PostgreSQL, Redis, runtimes, apps ---------------------------------------------------------


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root with ``tiny-bert``: MiniLM's tokenizer and a 2-layer, 32-wide config (random init)."""
    return build_tiny_bert(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def pg_url() -> str:
    """Our own database, emptied and rebuilt by running the migrations (so every run tests them)."""
    try:
        ensure_database(PG_URL)
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
        truncate(pg_engine)
        yield None
        truncate(pg_engine)
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
