"""store.profiles.get_or_create_profiles: one row per key, one SELECT and one INSERT, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from jobs.lifecycle import admit_profile
from store import profiles
from store.models import StoredProfile
from store.profiles import ProfileSpec

SETTINGS = {"n": 20, "seed": 0}


def _spec(key: str, ref: str = "timm:x", modality: str = "vision") -> ProfileSpec:
    return ProfileSpec(key * 64, ref, modality, "digits", SETTINGS)


def _get_or_create(session, specs: list[ProfileSpec]) -> list[str]:
    return profiles.get_or_create_profiles(session, specs, admit=admit_profile)


def _session(backend: str, make_runtime, tmp_path: Path):
    if backend == "sqlite":
        return make_runtime(database_url=f"sqlite:///{tmp_path / 'upsert.db'}", auto_migrate=True).session()
    return make_runtime().session()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_key_inserted_between_lookup_and_insert_is_read_not_duplicated(backend, make_runtime, tmp_path, monkeypatch):
    """The race of two submissions of one model: the other's row lands after our SELECT missed it. Our INSERT
    does nothing for that key (no error, no aborted transaction, no savepoint), inserts the other key, and we
    get the other submission's row."""
    real = profiles._insert_unless_present
    winners: dict[str, str] = {}

    def other_submission_first(session, specs):
        winners.update(real(session, [ProfileSpec(specs[0].key, "timm:the-winner", "vision", "digits", SETTINGS)]))
        return real(session, specs)

    monkeypatch.setattr(profiles, "_insert_unless_present", other_submission_first)
    with _session(backend, make_runtime, tmp_path) as session:
        vision, language = _get_or_create(session, [_spec("k"), _spec("l", "hf:y", "language")])
        assert vision == winners["k" * 64] and language not in winners.values()
        rows = {p.key: p for p in session.scalars(select(StoredProfile))}
        assert len(rows) == 2 and rows["k" * 64].model_ref == "timm:the-winner" and rows["l" * 64].id == language
        assert rows["l" * 64].state == "queued" and rows["l" * 64].settings == SETTINGS
        assert rows["l" * 64].created_at is not None and len(language) == 36
        session.commit()  # the transaction is still usable: nothing failed inside it


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_screenings_two_profiles_cost_one_lookup_and_one_insert(backend, make_runtime, tmp_path):
    with _session(backend, make_runtime, tmp_path) as session:
        session.connection()  # the session's own start (a savepoint where it joins the test's transaction)
        statements: list[str] = []
        listen = lambda *args: statements.append(args[2].split()[0].upper())  # noqa: E731
        event.listen(session.get_bind(), "before_cursor_execute", listen)
        try:
            ids = _get_or_create(session, [_spec("a"), _spec("b", "hf:y", "language")])
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", listen)
        assert statements == ["SELECT", "INSERT"]  # no SAVEPOINT and RELEASE around each INSERT
        assert len(set(ids)) == 2
        assert _get_or_create(session, [_spec("b", "hf:y", "language"), _spec("a")]) == ids[::-1]
        assert session.scalar(select(func.count()).select_from(StoredProfile)) == 2
        # a batch names one profile twice: one row
        twice = _get_or_create(session, [_spec("c"), _spec("c")])
        assert twice[0] == twice[1] and session.scalar(select(func.count()).select_from(StoredProfile)) == 3


def test_other_databases_insert_a_row_at_a_time_under_savepoints(make_runtime, tmp_path, monkeypatch):
    """The path for a database without ON CONFLICT (run here on SQLite told it is another one)."""
    with _session("sqlite", make_runtime, tmp_path) as session:
        monkeypatch.setattr(session.get_bind().dialect, "name", "other")
        first = profiles._insert_unless_present(session, [_spec("a"), _spec("b")])
        again = profiles._insert_unless_present(session, [_spec("a"), _spec("c")])
        assert set(first) == {"a" * 64, "b" * 64} and set(again) == {"c" * 64}
        assert _get_or_create(session, [_spec("a"), _spec("c")]) == [first["a" * 64], again["c" * 64]]
