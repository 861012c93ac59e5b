"""Model profile rows: one per (model, dataset sample, engine settings), computed once and shared; found or
inserted in two statements (``INSERT ... ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import QUEUED, StoredProfile, new_id, utcnow


@dataclass(frozen=True)
class ProfileSpec:
    """A profile a screening needs: its key (``phasecore.settings.profile_key``, tenant-scoped where keys are
    required) and what a new row records."""

    key: str
    model_ref: str
    modality: str
    dataset_ref: str
    settings: dict[str, Any]


#: what becomes of a row that exists already, before a new screening uses it: raise to refuse the request, or
#: change its state (``jobs.lifecycle.admit_profile``: a poisoned one refuses, a failed one is queued again)
Admit = Callable[[Session, StoredProfile], None]


def get_or_create_profiles(
    session: Session, specs: Sequence[ProfileSpec], *, admit: Admit, inserted: set[str] | None = None
) -> list[str]:
    """The ids of the profile rows under ``specs``' keys (in order), inserting the missing ones; the ids this
    call inserted are added to ``inserted`` when given (rows in state ``queued`` that no one else can see
    before the transaction commits). Every existing row is passed to ``admit`` first.

    Two statements for a screening's two profiles, whether they exist or not: one SELECT of both keys, and
    one ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING`` of the missing ones (before, each profile took a
    SELECT and a savepointed INSERT: eight round trips). The unique key makes concurrent submissions of the
    same model agree on one row (the loser's insert does nothing and it reads the winner's), so the profile is
    computed once.
    """
    keys = list(dict.fromkeys(spec.key for spec in specs))
    ids = _existing(session, keys, admit)
    missing = [spec for spec in {spec.key: spec for spec in specs}.values() if spec.key not in ids]
    if missing:
        new = _insert_unless_present(session, missing)
        ids.update(new)
        if inserted is not None:
            inserted.update(new.values())
        lost = [spec.key for spec in missing if spec.key not in ids]
        if lost:  # concurrent submissions inserted these first: read theirs
            ids.update(_existing(session, lost, admit))
        if any(key not in ids for key in keys):  # pragma: no cover - a conflicting row vanished meanwhile
            raise RuntimeError("a profile conflicted on insert and then could not be read")
    return [ids[spec.key] for spec in specs]


def _existing(session: Session, keys: list[str], admit: Admit) -> dict[str, str]:
    """key -> id of the rows under ``keys``, each passed to ``admit``."""
    found: dict[str, str] = {}
    for profile in session.scalars(select(StoredProfile).where(StoredProfile.key.in_(keys))):
        admit(session, profile)
        found[profile.key] = profile.id
    return found


def _insert_unless_present(session: Session, specs: list[ProfileSpec]) -> dict[str, str]:
    """key -> id of the rows this statement inserted; keys a concurrent submission inserted first are absent.

    One Core statement on PostgreSQL and SQLite (a failed plain INSERT would abort a PostgreSQL transaction
    without a savepoint around it); other databases take the savepoint path, a row at a time."""
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "key": spec.key,
            "model_ref": spec.model_ref,
            "modality": spec.modality,
            "dataset_ref": spec.dataset_ref,
            "settings": spec.settings,
            "state": QUEUED,
            "progress": 0.0,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for spec in specs
    ]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # same API, other module
    else:
        inserted: dict[str, str] = {}
        for spec, row in zip(specs, rows, strict=True):
            try:
                with session.begin_nested():
                    session.add(StoredProfile(**row))
            except IntegrityError:
                continue
            inserted[spec.key] = str(row["id"])
        return inserted
    table = cast(Table, StoredProfile.__table__)  # a mapped class's table is a Table
    # parameters apart from the statement (one compiled form, cached; SQLAlchemy sends the rows as one
    # multi-row INSERT): a .values(rows) statement is compiled anew for its literal rows, 2.5x the CPU
    statement = insert(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key, table.c.id)
    return {str(key): str(id_) for key, id_ in session.execute(statement, rows)}
