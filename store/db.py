"""Database engine, sessions and migrations (Alembic is the only way the schema is made)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from store.settings import ServiceSettings

if TYPE_CHECKING:
    from alembic.config import Config


def _migrations_dir() -> Path:
    """The Alembic scripts: ``store/migrations`` in an installed distribution (pyproject maps the top-level
    ``migrations/`` there), ``migrations/`` beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "migrations"
    return packaged if (packaged / "env.py").is_file() else here.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()
_migrate_lock = threading.Lock()


def make_engine(url: str, *, pooled: bool = True, settings: ServiceSettings | None = None) -> Engine:
    """An engine that survives a database restart: pooled connections idle over PING_AFTER_IDLE seconds are
    pinged and replaced when the ping fails.

    On PostgreSQL every connection has TCP keepalives (a peer that vanished without closing the connection is
    noticed in about a minute, not hours) and, when pooled, a statement timeout. Sizes and limits come from
    ``settings`` (``PHASESCREEN_DB_*``; the defaults when ``None``).
    ``pooled=False`` is for one-shot work (migrations) that must leave no connection behind; it has no
    statement timeout, since a migration may rewrite a large table.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **({} if pooled else {"poolclass": NullPool}),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    settings = settings or ServiceSettings()
    connect_args = _postgres_connect_args(settings, statement_timeout=pooled) if url.startswith("postgresql") else {}
    if not pooled:
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args=connect_args,
    )
    _ping_when_idle(engine, PING_AFTER_IDLE)
    return engine


#: a pooled connection idle longer than this (seconds) is pinged before it is handed out
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine, after: float) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections idle over ``after`` seconds only.

    A connection that sat in the pool may have been cut (a database restart, a failover, an idle timeout in
    between): it is pinged, and replaced when the ping fails. One just given back by a request is not: under
    load the ping was a round trip on every request (about a tenth of a GET's CPU here). A connection cut
    while busy fails its request (503, Retry-After) and SQLAlchemy then recycles every connection of the pool
    opened before the failure, so a restart under load costs each process about one failed request."""

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at")  # None: a connection just opened (info is per connection)
        if returned is None or time.monotonic() - returned < after:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as exc:  # the pool discards this connection and hands out another (up to 3 tries)
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _postgres_connect_args(settings: ServiceSettings, *, statement_timeout: bool) -> dict[str, Any]:
    """libpq connection parameters (psycopg and psycopg2 alike)."""
    args: dict[str, Any] = {"connect_timeout": 5}
    if settings.db_keepalives_idle:
        args.update(
            keepalives=1,
            keepalives_idle=settings.db_keepalives_idle,
            keepalives_interval=settings.db_keepalives_interval,
            keepalives_count=settings.db_keepalives_count,
        )
    if statement_timeout and settings.db_statement_timeout:
        args["options"] = f"-c statement_timeout={max(1, round(settings.db_statement_timeout * 1000))}"
    return args


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:  # DBAPI objects are untyped
    # WAL lets the API read while an in-process job writes; foreign keys are off by default in SQLite
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:  # imported lazily: alembic is for migrations only
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` by running the Alembic migrations."""
    from alembic import command

    with _migrate_lock:
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    with _migrate_lock:
        command.downgrade(alembic_config(url), revision)


def ping(engine: Engine) -> None:
    """Raise unless the database answers a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@contextlib.contextmanager
def local_session(settings: ServiceSettings | None = None) -> Iterator[Session]:
    """A session on the configured database (migrated first when it is the embedded SQLite file).

    For one-shot callers such as ``phasescreen screen``; the caller commits.
    """
    settings = settings or ServiceSettings()
    if settings.should_migrate:
        upgrade(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url, settings=settings)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()
