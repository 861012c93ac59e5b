"""SQLAlchemy models of batches: a grid of pairs, each pair one ordinary screening.

A batch adds no job of its own: its screenings share their model profiles through the profile table, so a
V × L grid runs V + L profile jobs and V · L pair jobs. The schema is made by migrations 0003, 0004 and 0005.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from store.models import Base, JSONType, Submitted, UTCDateTime, utcnow


class Batch(Submitted, Base):
    """A request for every (vision, language) pair of two lists of models on one dataset."""

    __tablename__ = "batches"

    fingerprint: Mapped[str | None] = mapped_column(String(64))  # of the request body, to tell a replay
    name: Mapped[str | None] = mapped_column(String(200))
    dataset_ref: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)  # {vision: [...], language: [...], dataset, options}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BatchPair(Base):
    """Cell (vision_index, language_index) of a batch's matrix: the screening of that pair."""

    __tablename__ = "batch_pairs"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    vision_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    language_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    screening_id: Mapped[str] = mapped_column(ForeignKey("screenings.id", ondelete="CASCADE"), index=True)
