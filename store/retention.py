"""Retention: the stored arrays of model profiles nobody used lately are dropped; results are kept.

A screening's result is a small JSON document and stays. A profile's blob (its arrays, megabytes to gigabytes)
is only needed to screen new pairs against that model with those settings and engine version; once no screening
created within the retention window used it, and none still waits for it, ``phasescreen db prune`` drops the
blob and marks the profile ``cancelled`` with a ``pruned`` problem. A later request for it queues it again (as
any cancelled profile), and a failed profile pruned this way is forgiven (a poisoned request may be tried again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from problems import problem_document
from store.models import ACTIVE_STATES, CANCELLED, FAILED, SUCCEEDED, Screening, StoredProfile, utcnow


@dataclass(frozen=True)
class PruneReport:
    profiles: int  # profiles whose blob was dropped (or failures forgotten)
    bytes: int  # blob bytes freed


def _used_since(cutoff: datetime) -> ColumnElement[bool]:
    uses = or_(Screening.vision_profile_id == StoredProfile.id, Screening.language_profile_id == StoredProfile.id)
    return exists().where(uses, or_(Screening.created_at >= cutoff, Screening.state.in_(ACTIVE_STATES)))


def prune_profiles(session: Session, *, older_than_days: float, dry_run: bool = False) -> PruneReport:
    """Drop the blobs of profiles finished more than ``older_than_days`` ago that no screening created since,
    and no active screening, uses. The caller commits."""
    cutoff = utcnow() - timedelta(days=older_than_days)
    condition = and_(
        StoredProfile.state.in_((SUCCEEDED, FAILED)),
        StoredProfile.finished_at < cutoff,
        ~_used_since(cutoff),
    )
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(StoredProfile.size_bytes), 0)).where(condition)
    ).one()
    if dry_run or not count:
        return PruneReport(int(count or 0), int(size or 0))
    pruned = problem_document(
        410,
        "pruned",
        "Profile pruned",
        f"the stored arrays were dropped by `phasescreen db prune` (unused for {older_than_days:g} days); "
        "a new request computes the profile again",
    )
    session.execute(
        update(StoredProfile)
        .where(condition)
        .values(state=CANCELLED, data=None, size_bytes=None, attempts=0, problem=pruned, stage=None)
        .execution_options(synchronize_session=False)
    )
    return PruneReport(int(count or 0), int(size or 0))


def blob_totals(session: Session) -> tuple[int, int]:
    """(profiles holding a blob, their total size in bytes)."""
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(StoredProfile.size_bytes), 0)).where(
            StoredProfile.data.is_not(None)
        )
    ).one()
    return int(count or 0), int(size or 0)
