"""Database engine, sessions and migrations (Alembic is the only way the schema is made)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from store.settings import ServiceSettings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_migrate_lock = threading.Lock()


def make_engine(url: str, *, pooled: bool = True, settings: ServiceSettings | None = None) -> Engine:
    """An engine that survives a database restart: stale pooled connections are pinged and replaced.

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
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args=connect_args,
    )


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
