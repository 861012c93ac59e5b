"""Stage durations of finished jobs, summed in the database so any API replica can report all workers'."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import JobStageStat


def record_stage_durations(session: Session, kind: str, durations: dict[str, float]) -> None:
    """Add one observation per stage (an upsert, so concurrent workers never lose each other's)."""
    if not durations:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for stage, seconds in durations.items():
        statement = insert(JobStageStat).values(kind=kind, stage=stage[:64], count=1, seconds=seconds)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["kind", "stage"],
                set_={"count": JobStageStat.count + 1, "seconds": JobStageStat.seconds + statement.excluded.seconds},
            )
        )


def stage_totals(session: Session) -> list[tuple[str, str, int, float]]:
    rows = session.execute(select(JobStageStat.kind, JobStageStat.stage, JobStageStat.count, JobStageStat.seconds))
    return [(kind, stage, count, seconds) for kind, stage, count, seconds in rows]
