"""Database engine, sessions and migrations (Alembic is the only way the schema is made)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.settings import ServiceSettings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_migrate_lock = threading.Lock()


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """An engine that survives a database restart: stale pooled connections are pinged and replaced.

    ``pooled=False`` is for one-shot work (migrations) that must leave no connection behind.
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
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    if not pooled:
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=10, connect_args=connect_args
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI objects are untyped
    # WAL lets the API read while an in-process job writes; foreign keys are off by default in SQLite
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str):  # noqa: ANN201 - alembic.config.Config, imported lazily
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
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()
