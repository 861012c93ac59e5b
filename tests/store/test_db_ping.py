"""Pooled PostgreSQL connections: pinged before use after PING_AFTER_IDLE, not on every checkout."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from store import db
from store.settings import ServiceSettings


def _backend(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pg_engine: Engine, pid: int) -> None:
    with pg_engine.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    time.sleep(0.2)  # the backend is gone, the pooled client side does not know


@pytest.mark.commits  # its own engine and pool, and a backend cut from another connection
def test_an_idle_pooled_connection_cut_by_the_server_is_replaced_unnoticed(pg_url, pg_engine, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.1)
    engine = db.make_engine(pg_url, settings=ServiceSettings(db_pool_size=1, db_max_overflow=0))
    try:
        first = _backend(engine)
        _terminate(pg_engine, first)  # longer than PING_AFTER_IDLE: the ping finds it dead, another is opened
        assert _backend(engine) != first
    finally:
        engine.dispose()


@pytest.mark.commits
def test_a_busy_connection_is_not_pinged_and_a_cut_costs_one_request(pg_url, pg_engine, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 60.0)
    engine = db.make_engine(pg_url, settings=ServiceSettings(db_pool_size=1, db_max_overflow=0))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        first = _backend(engine)
        for _ in range(3):
            assert _backend(engine) == first
        assert statements == ["SELECT pg_backend_pid()"] * 4  # no ping between uses (SQLAlchemy's pre-ping pinged)
        _terminate(pg_engine, first)
        with pytest.raises(OperationalError):  # the request that finds it cut fails (the API answers 503)
            _backend(engine)
        assert _backend(engine) != first  # and the pool has replaced it for the next one
    finally:
        engine.dispose()
