"""Request and response bodies of the HTTP API (pydantic v2); they are the OpenAPI schema."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from phasecore import settings as engine
from phasecore.screening.result import ScreeningResult
from problems import PROBLEM_MEDIA_TYPE, ProblemDocument
from service.contract import DATASET_MAX_LENGTH, DATASET_PATTERN, REFERENCE_MAX_LENGTH, REFERENCE_PATTERN

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _described(field: str) -> str | None:
    return engine.EngineSettings.model_fields[field].description


_Model = TypeVar("_Model", bound=type[BaseModel])


def _published_as(name: str) -> Callable[[_Model], _Model]:
    """A class decorator: the body is published as ``name`` (its OpenAPI component and title, and the class
    validation errors name), whatever the class is called in code."""

    def rename(model: _Model) -> _Model:
        model.__name__ = model.__qualname__ = name
        model.model_rebuild(force=True)
        return model

    return rename


@_published_as("EngineSettings")  # named apart from the engine's class in code, published under its name
class EngineSettingsBody(engine.EngineSettings):
    """Every knob that changes a number, flat (the defaults of docs/metrics.md, version 2). Strict as JSON is typed: an
    integer is not a string or a boolean, a boolean is not 0 or "true". The API turns it into the engine's own
    ``phasecore.settings.EngineSettings`` (see :func:`engine_settings`)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    probes: Annotated[int, Field(ge=1, le=engine.MAX_PROBES)] | Literal["exact"] = Field(
        4, description=_described("probes")
    )
    stability_lr_scales: tuple[Annotated[float, Strict(), Field(gt=0, le=64)], ...] = Field(
        (1.0,), min_length=1, max_length=8, strict=False, description=_described("stability_lr_scales")
    )

    @model_validator(mode="before")
    @classmethod
    def _from_engine(cls, data: Any) -> Any:
        # settings the CLI built already (the engine's class) are taken field by field
        if isinstance(data, engine.EngineSettings) and not isinstance(data, cls):
            return data.model_dump()
        if isinstance(data, dict):
            # JSON Schema's integer is a number without a fraction: 443.0 is one (pydantic's strict int is not)
            integers = _integer_fields(cls)
            return {
                key: int(value)
                if key in integers and isinstance(value, float) and value.is_integer() and abs(value) < 2**63
                else value
                for key, value in data.items()
            }
        return data


@functools.cache
def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields whose JSON schema allows an integer and no other number."""
    names = set()
    for name, prop in model.model_json_schema()["properties"].items():
        types = {prop.get("type")} | {option.get("type") for option in prop.get("anyOf", ())}
        if "integer" in types and "number" not in types:
            names.add(name)
    return frozenset(names)


def engine_settings(options: engine.EngineSettings) -> engine.EngineSettings:
    """The engine's settings class of request options (fingerprints, caches and jobs see one class)."""
    if type(options) is engine.EngineSettings:
        return options
    return engine.EngineSettings.model_validate(options.model_dump())


def _written_as(pattern: str, max_length: int, description: str) -> Any:
    """A text field of ``pattern`` (service.contract), which the schema publishes and the API checks after it."""
    return Field(min_length=1, max_length=max_length, description=description, json_schema_extra={"pattern": pattern})


def _reference(description: str) -> Any:
    return _written_as(REFERENCE_PATTERN, REFERENCE_MAX_LENGTH, description)


def _dataset(description: str) -> Any:
    return _written_as(DATASET_PATTERN, DATASET_MAX_LENGTH, description)


def _check_text(value: Any, path: str = "body") -> None:
    """Reject text that no database can store: NUL bytes and unpaired surrogates."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path} contains a NUL byte")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{path} is not valid UTF-8 text (unpaired surrogate)") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path)
            _check_text(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_text(item, f"{path}[{index}]")


class RequestBody(BaseModel):
    """A JSON request body: typed strictly (an integer is not a string), no field outside the schema, and only
    text a database can store."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        _check_text(data)
        return data


class ScreeningRequest(RequestBody):
    """What to screen: two model references, a paired dataset and the engine settings."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "vision": "pkg:efficientnet-lite0",
                    "language": "pkg:all-minilm-l6-v2",
                    "dataset": "digits",
                    "options": {"n": 64, "probes": 1},
                }
            ]
        },
    )

    vision: str = _reference("vision model reference, source:name[@rev][?weights=..] (timm:, hf:, file:, pkg:)")
    language: str = _reference("language model reference")
    dataset: str = _dataset("paired dataset reference, e.g. digits")
    options: EngineSettingsBody = Field(default_factory=EngineSettingsBody, description="engine settings")
    reuse: bool | None = Field(
        None,
        description="serve an identical finished request from its stored result; null = deployment default",
    )


class ProfileSummary(BaseModel):
    id: str
    state: State
    stage: str | None
    progress: float
    href: str


class ProblemOut(ProblemDocument):
    """RFC 9457 problem details."""

    @classmethod
    def of(cls, problem: ProblemDocument | None) -> ProblemOut | None:
        """The API's form of a stored problem (the same document)."""
        return None if problem is None else cls.model_validate(problem.model_dump())


class ScreeningOut(BaseModel):
    """A screening: where it stands, what was asked, and the result or the problem."""

    id: str
    state: State
    stage: str | None = Field(description="what runs now, e.g. 'vision:ntk' or 'pair'")
    progress: float = Field(ge=0, le=1)
    request: dict[str, Any]
    fingerprint: str = Field(description="sha256 of the normalised request and the engine version")
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    profiles: dict[str, ProfileSummary] = Field(description="the vision and language model profiles")
    reused_from: str | None = Field(description="the screening whose stored result this one serves")
    result: ScreeningResult | None = Field(
        description="the result JSON, the same as `phasescreen screen` writes (only when succeeded)"
    )
    problem: ProblemOut | None = Field(description="RFC 9457 problem document (when failed)")
    href: str


class ScreeningPage(BaseModel):
    items: list[ScreeningOut] = Field(description="newest first; results are left out, fetch one to read it")
    next_cursor: str | None = Field(description="pass as ?cursor= to read the next page; null on the last")


class ProfileOut(BaseModel):
    id: str
    key: str
    model: str
    modality: str
    dataset: str
    settings: dict[str, Any]
    state: State
    stage: str | None
    progress: float
    attempts: int
    identity: dict[str, Any] | None = Field(description="what exactly was loaded (name, revision, hash, params)")
    meta: dict[str, Any] | None
    arrays: dict[str, Any] | None = Field(description="name -> {shape, dtype} of the stored arrays")
    size_bytes: int | None
    problem: ProblemOut | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    href: str


class SourcesOut(BaseModel):
    allowed_sources: list[str]
    allowed_models: list[str] = Field(
        default_factory=list, description="name patterns of the hf:/timm: models accepted (empty: any)"
    )
    sources: list[dict[str, Any]] = Field(description="model sources with their descriptions")
    datasets: list[dict[str, Any]] = Field(description="paired datasets this deployment can load")
    limits: dict[str, int]


#: a route's ``responses`` entry for a status answered with a problem document (``{404: PROBLEM}``)
PROBLEM: dict[str, Any] = {"model": ProblemOut, "content": {PROBLEM_MEDIA_TYPE: {}}}
#: the problem statuses of a submission (a screening or a batch): bad request, auth, size, validation, rate, capacity
SUBMIT_PROBLEMS: dict[int | str, dict[str, Any]] = {status: PROBLEM for status in (400, 401, 403, 413, 422, 429, 503)}
