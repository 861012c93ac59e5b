"""Deployment settings, read from ``PHASESCREEN_*`` environment variables: what the API, the workers and the CLI's
embedded store share. The settings only the HTTP API reads extend them in ``service.settings.ApiSettings``.

Every field is documented in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from phasecore.references.refs import parse_model_patterns
from phasecore.settings import DEVICE_SPEC

DEFAULT_SOURCES = ("timm", "hf", "file", "pkg", "zoo")


def default_home() -> Path:
    """Where the embedded deployment keeps its SQLite file (``$PHASESCREEN_HOME`` or XDG data dir)."""
    env = os.environ.get("PHASESCREEN_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "phasescreen"


_GIB = 2**30


def host_memory_gb(
    *, cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float:
    """Memory (GiB) this process may use: the host's physical memory, or the container's cgroup limit when that
    is lower (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``, of this process's own cgroup or the
    namespace's root). The default of ``PHASESCREEN_WORKER_MEMORY_GB``."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX host: no cgroups either
        physical = 0
    limits = [physical] if physical > 0 else []
    for path in _cgroup_limit_files(cgroup_root, proc_cgroup):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (physical or 1 << 62):  # "max" or v1's 2^63 - page: no limit
            limits.append(int(text))
    return round(min(limits) / _GIB, 2) if limits else 64.0


def _cgroup_limit_files(cgroup_root: Path, proc_cgroup: Path) -> list[Path]:
    own: list[Path] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path"
            own.append(cgroup_root / relative / "memory.max")
        elif "memory" in controllers.split(","):
            own.append(cgroup_root / "memory" / relative / "memory.limit_in_bytes")
    return [*own, cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"]


class ServiceSettings(BaseSettings):
    """Settings of one deployment that the API, the workers and the CLI's embedded store share (the API's own:
    ``service.settings.ApiSettings``)."""

    model_config = SettingsConfigDict(env_prefix="PHASESCREEN_", extra="ignore", frozen=True)

    # storage and queue
    home: Path = Field(default_factory=default_home, description="directory of the embedded SQLite file")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite file under HOME")
    redis_url: str | None = Field(None, description="Redis URL of the RQ queue; unset = in-process executor")
    queue_name: str = Field("phasescreen", min_length=1, description="RQ queue that API and workers share")
    auto_migrate: bool | None = Field(
        None, description="run migrations at start-up; unset = only for the embedded SQLite file"
    )

    # PostgreSQL connections
    db_pool_size: int = Field(5, ge=1, le=1000, description="connections each process keeps open")
    db_max_overflow: int = Field(10, ge=0, le=1000, description="connections opened beyond the pool under load")
    db_pool_timeout: float = Field(
        10.0, gt=0, description="seconds a request waits for a free connection before answering 503"
    )
    db_statement_timeout: float = Field(60.0, ge=0, description="seconds one SQL statement may run; 0 = no limit")
    db_keepalives_idle: int = Field(
        30, ge=0, description="seconds a connection is idle before TCP keepalive probes start; 0 = off"
    )
    db_keepalives_interval: int = Field(10, ge=1, description="seconds between TCP keepalive probes")
    db_keepalives_count: int = Field(3, ge=1, description="unanswered keepalive probes before the connection is dead")

    # engine inputs
    model_root: Path | None = Field(None, description="root of file: model references")
    data_root: Path | None = Field(None, description="root of local datasets")
    allowed_sources: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_SOURCES, description="model sources this deployment accepts (comma-separated)"
    )
    allowed_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="name patterns of the hf: and timm: models accepted (comma-separated globs, "
        "e.g. hf:sentence-transformers/*,timm:resnet*); empty = any name of an allowed source",
    )

    # security
    require_api_key: bool = Field(
        False, description="every /v1 request needs an API key and sees only its tenant's objects"
    )

    # limits
    max_n: int = Field(4096, ge=8, description="largest number of paired samples N")
    max_params: int = Field(2_000_000_000, ge=1, description="largest parameter count of a model")
    worker_memory_gb: float = Field(
        default_factory=host_memory_gb,
        gt=0,
        description="memory (GiB) a worker can give one job; requests whose estimate exceeds it are refused; "
        "unset = this host's physical memory, or its container's cgroup limit when lower",
    )
    job_timeout: int = Field(3600, ge=10, description="seconds one job may run before it is failed")
    max_job_seconds: float | None = Field(
        None,
        gt=0,
        description="estimated seconds of one profile job (on the reference 2-core CPU, for a model the size of "
        "EfficientNet-Lite0) above which a request is refused; unset = PHASESCREEN_JOB_TIMEOUT",
    )
    max_attempts: int = Field(3, ge=1, le=20, description="tries of a job before it is failed")
    retry_backoff: Annotated[tuple[int, ...], NoDecode] = Field(
        (10, 60, 300), description="seconds to wait before each retry (comma-separated)"
    )
    max_active_screenings: int = Field(
        1000, ge=1, description="queued + running screenings before 503 (per tenant when keys are required)"
    )

    # liveness of jobs
    lease_timeout: float = Field(120.0, gt=0, description="seconds without heartbeat before a job is presumed lost")
    stall_timeout: float = Field(
        1800.0,
        gt=0,
        description="seconds a running job may go without reporting progress: its lease is no longer renewed "
        "(the reconciler requeues it) and a worker's watchdog ends the worker process",
    )
    reconcile_interval: float = Field(60.0, gt=0, description="seconds between reconciler passes")
    reconcile_grace: float = Field(10.0, ge=0, description="age before a queued row counts as missing from the queue")

    # behaviour
    reuse_results: bool = Field(True, description="serve an identical finished request from its stored result")
    embedded_workers: int = Field(1, ge=1, le=64, description="threads of the in-process executor")
    encoder_cache_size: int = Field(2, ge=0, le=64, description="models a worker keeps loaded between jobs")
    device: str = Field(
        "auto",
        pattern=DEVICE_SPEC,
        description="where workers and local runs put models: auto (the first GPU if torch sees one, else the "
        "CPU), cpu, cuda or cuda:N (one worker process per GPU)",
    )
    worker_metrics_port: int = Field(0, ge=0, le=65535, description="port of a worker's /metrics; 0 = off")
    log_level: str = Field("INFO", description="logging level of serve and worker")
    log_format: Literal["json", "text"] = Field(
        "json", description="log lines of serve and worker: json (one object per line) or text (for people)"
    )

    @field_validator("allowed_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        parts = value.split(",") if isinstance(value, str) else value
        if isinstance(parts, list | tuple):
            return parse_model_patterns([str(p) for p in parts if str(p).strip()])
        return value

    @field_validator("retry_backoff", mode="before")
    @classmethod
    def _split_backoff(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'phasescreen.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def embedded_queue(self) -> bool:
        return not self.redis_url

    @property
    def should_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @property
    def job_seconds_budget(self) -> tuple[float, str]:
        """The compute budget of one job and the setting it comes from."""
        if self.max_job_seconds is not None:
            return self.max_job_seconds, "PHASESCREEN_MAX_JOB_SECONDS"
        return float(self.job_timeout), "PHASESCREEN_JOB_TIMEOUT"

    @property
    def heartbeat_interval(self) -> float:
        """A lease is renewed four times per timeout, so one slow write does not lose it."""
        return max(0.2, self.lease_timeout / 4)
