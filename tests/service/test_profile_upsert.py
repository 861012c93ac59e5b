"""get_or_create_profile: one row per key, one INSERT statement, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from service import profiles
from store.models import ModelProfile

SETTINGS = {"n": 20, "seed": 0}


def _session(backend: str, make_runtime, tmp_path: Path):
    if backend == "sqlite":
        return make_runtime(database_url=f"sqlite:///{tmp_path / 'upsert.db'}", auto_migrate=True).session()
    return make_runtime().session()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_key_inserted_between_lookup_and_insert_is_read_not_duplicated(backend, make_runtime, tmp_path, monkeypatch):
    """The race of two submissions of one model: the other's row lands after our SELECT missed it. Our INSERT
    does nothing (no error, no aborted transaction, no savepoint) and we return the other's row."""
    real = profiles._insert_unless_present
    winners: list[ModelProfile] = []

    def other_submission_first(session, values):
        winners.append(real(session, dict(values, model_ref="timm:the-winner")))
        return real(session, values)

    monkeypatch.setattr(profiles, "_insert_unless_present", other_submission_first)
    with _session(backend, make_runtime, tmp_path) as session:
        got = profiles.get_or_create_profile(session, "k" * 64, "timm:ours", "vision", "digits", SETTINGS)
        assert winners[0] is not None and got.id == winners[0].id and got.model_ref == "timm:the-winner"
        assert session.scalar(select(func.count()).select_from(ModelProfile)) == 1
        session.commit()  # the transaction is still usable: nothing failed inside it


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_new_profile_costs_a_lookup_and_one_insert(backend, make_runtime, tmp_path):
    with _session(backend, make_runtime, tmp_path) as session:
        session.connection()  # the session's own start (a savepoint where it joins the test's transaction)
        statements: list[str] = []
        listen = lambda *args: statements.append(args[2].split()[0].upper())  # noqa: E731
        event.listen(session.get_bind(), "before_cursor_execute", listen)
        try:
            created = profiles.get_or_create_profile(session, "a" * 64, "timm:x", "vision", "digits", SETTINGS)
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", listen)
        assert statements == ["SELECT", "INSERT"]  # no SAVEPOINT and RELEASE around the INSERT
        assert created.state == "queued" and created.settings == SETTINGS
        assert len(created.id) == 36 and created.created_at is not None
        again = profiles.get_or_create_profile(session, "a" * 64, "timm:x", "vision", "digits", SETTINGS)
        assert again is created
