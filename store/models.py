"""SQLAlchemy models. The schema itself is created only by the migrations under migrations/."""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, deferred, mapped_column
from sqlalchemy.sql.expression import FunctionElement, literal
from sqlalchemy.types import TypeEngine

from phasecore.screening.result import ScreeningResult
from problems import ProblemDocument

log = logging.getLogger(__name__)

# None is stored as SQL NULL (not JSON 'null'), so "IS NULL" means "absent" on both backends
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# the states a screening or a profile goes through; terminal ones never change again
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
ACTIVE_STATES = (QUEUED, RUNNING)
TERMINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


class db_now(FunctionElement[datetime]):  # noqa: N801 - a SQL function, named like one
    """The database's clock, ``offset`` seconds from now (negative: in the past), as a SQL expression.

    Heartbeats, leases and the reconciler's cut-offs are all taken from this one clock, so workers whose own
    clocks drift never judge each other's leases (PostgreSQL: ``now()``, the start of the transaction)."""

    inherit_cache = True

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__(literal(float(offset)))

    @property
    def type(self) -> UTCDateTime:  # type: ignore[override]  # an attribute in FunctionElement; SQLAlchemy allows a property
        return UTCDateTime()


@compiles(db_now)
def _db_now(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(now() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # the text format SQLAlchemy stores DATETIME in on SQLite, so comparisons with stored values hold
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({compiler.process(element.clauses, **kw)} || ' seconds'))"


def new_id() -> str:
    """A UUID-shaped id starting with the time in ms, so ids sort by creation (cursor pagination)."""
    raw = f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


#: ids of screenings, batches, profiles and outcomes (:func:`new_id`), and the list cursor (the last id of a
#: page); the API publishes it as the pattern of its id parameters
ID_PATTERN = r"^[0-9a-f-]{36}$"
_ID = re.compile(ID_PATTERN)


def is_id(value: str) -> bool:
    """Whether ``value`` has the form of an id (looked up before it is sent to the database)."""
    return _ID.fullmatch(value) is not None


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class TypedJSON(TypeDecorator[Any]):
    """A JSON column holding one pydantic model: a model (or a mapping it validates) in, the model out.

    Written as the model's JSON form (``model_dump(mode="json")``, non-finite floats as null, as jsonb requires),
    so the stored document is exactly what the API serves. A stored document that no longer validates (written
    by an older release under another schema) reads as None, with a warning; the row is left as it is."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def __init__(self, model: type[BaseModel]) -> None:
        super().__init__()
        self.model = model

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        typed = value if isinstance(value, self.model) else self.model.model_validate(value)
        return jsonable(typed.model_dump(mode="json"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        try:
            return self.model.model_validate(value)
        except ValidationError:
            log.warning("a stored %s no longer validates; read as absent", self.model.__name__, exc_info=True)
            return None


class Base(DeclarativeBase):
    # names the migrations use too, so autogenerate finds no difference between the two
    metadata = MetaData(
        naming_convention={"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s"}
    )


class _JobColumns:
    """Columns of anything a worker runs: state, progress and the lease that proves the worker is alive."""

    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    stage: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    problem: Mapped[ProblemDocument | None] = mapped_column(TypedJSON(ProblemDocument))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Submitted:
    """Columns of what a caller submits (a screening, a batch, a reported outcome): its id, who submitted it (the
    API key and its tenant) and the Idempotency-Key it came with, unique per key (``store.idempotency``)."""

    # first in each table (a mixin's columns otherwise follow the model's own)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id, sort_order=-1)
    owner: Mapped[str] = mapped_column(String(64), default="", sort_order=-1)  # API key id, "" when anonymous
    tenant: Mapped[str] = mapped_column(String(64), default="", index=True, sort_order=-1)  # "" anonymous
    idempotency_key: Mapped[str | None] = mapped_column(String(255), sort_order=-1)

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[UniqueConstraint]:
        table = cls.__tablename__  # type: ignore[attr-defined]  # set by each model
        return (UniqueConstraint("owner", "idempotency_key", name=f"uq_{table}_owner_idempotency_key"),)


class StoredProfile(_JobColumns, Base):
    """Per-model work on one dataset sample under one set of engine settings, shared by every pair: the row of
    a model profile (``phasecore.screening.profile.ModelProfile``, stored as ``data``) and of its job."""

    __tablename__ = "model_profiles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # phasecore.settings.profile_key
    model_ref: Mapped[str] = mapped_column(String(512), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    dataset_ref: Mapped[str] = mapped_column(String(256))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType)
    identity: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    arrays: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # name -> {shape, dtype}
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    # the engine's ModelProfile.to_bytes() blob; deferred so listing profiles never drags megabytes along
    data: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))


class Screening(Submitted, _JobColumns, Base):
    """One request to screen a (vision, language) pair; its pair step runs once both profiles exist."""

    __tablename__ = "screenings"

    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    vision_ref: Mapped[str] = mapped_column(String(512), index=True)
    language_ref: Mapped[str] = mapped_column(String(512), index=True)
    dataset_ref: Mapped[str] = mapped_column(String(256), index=True)
    vision_profile_id: Mapped[str | None] = mapped_column(ForeignKey("model_profiles.id"), index=True)
    language_profile_id: Mapped[str | None] = mapped_column(ForeignKey("model_profiles.id"), index=True)
    result: Mapped[ScreeningResult | None] = mapped_column(TypedJSON(ScreeningResult))
    reused_from: Mapped[str | None] = mapped_column(String(36))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class Outcome(Submitted, Base):
    """What a training run of a screened pair achieved, reported by the team that ran it (``POST
    /v1/screenings/{id}/outcomes``): the real answer beside the screening's own proxy (METRICS §7).

    ``success_direction`` says how ``value`` is read against ``success_threshold``: ``above`` (success when
    value ≥ threshold) or ``below`` (success when value ≤ threshold). Several runs of one screening are rows of
    their own; the study takes the latest of a pair (``phasecore.study.reported``)."""

    __tablename__ = "outcomes"

    screening_id: Mapped[str] = mapped_column(ForeignKey("screenings.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the reported body (Idempotency-Key replays)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    success_threshold: Mapped[float] = mapped_column(Float)
    success_direction: Mapped[str] = mapped_column(String(8))  # above | below
    dataset: Mapped[str] = mapped_column(String(256))
    examples: Mapped[int | None] = mapped_column(BigInteger)
    steps: Mapped[int | None] = mapped_column(BigInteger)
    method: Mapped[str | None] = mapped_column(String(64))
    run_url: Mapped[str | None] = mapped_column(String(2048))
    notes: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key, stored as the sha256 of its secret; the secret is shown once, at creation.

    Keys of one ``tenant`` share their screenings and batches; ``scopes`` is a comma-separated subset of
    ``screen``, ``read``, ``report`` and ``admin``."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[str] = mapped_column(String(64), default="screen,read,report")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobStageStat(Base):
    """Running totals of stage durations over every worker: how /metrics reports job durations by stage in
    the service deployment, where the jobs run in other processes and on other machines."""

    __tablename__ = "job_stage_stats"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # profile | pair
    stage: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


def jsonable(value: Any) -> Any:
    """JSON that PostgreSQL's jsonb accepts: no NaN or infinities (they become null), no numpy scalars."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return jsonable(value.item())
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy array
        return jsonable(value.tolist())
    return value
