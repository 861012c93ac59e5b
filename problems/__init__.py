"""RFC 9457 problem documents: the one shape of every error the service returns or stores.

A layer of its own, under the store, the jobs and the API, which all build or raise problems (a failed job stores
one, a refused request answers one); above the engine only, whose domain errors become problems here
(:func:`from_domain_error`). Nothing here knows HTTP beyond the status code a problem carries.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from phasecore.errors import (
    AssetUnavailable,
    InvalidReference,
    InvalidSettings,
    PhasescreenError,
    SourceNotAllowed,
    UnsupportedModel,
    scrub,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:phasescreen:problem:"

# HTTP status of each domain error when it answers a request
_STATUS = {
    InvalidReference: 422,
    InvalidSettings: 422,
    UnsupportedModel: 422,
    AssetUnavailable: 422,
    SourceNotAllowed: 403,
}
_TITLES = {
    "invalid-reference": "Invalid model or dataset reference",
    "source-not-allowed": "Model source not allowed",
    "asset-unavailable": "Weights or data unavailable",
    "invalid-settings": "Invalid screening settings",
    "exceeds-worker-memory": "Too large for a worker",
    "exceeds-worker-budget": "Too long for a worker",
    "unsupported-model": "Unsupported model",
}


class ProblemDocument(BaseModel):
    """One RFC 9457 problem document, as the API answers it and a failed job's row stores it.

    Open, as the RFC makes it: members beyond the five standard ones (``retry_after``, ``errors``, ``checks``,
    ``profile_id``, ...) are kept as extensions. ``instance`` is left out of the document when it is unset."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, exclude_if=lambda value: value is None)

    @property
    def kind(self) -> str:
        """The type's last part (``urn:phasescreen:problem:timeout`` → ``timeout``)."""
        return self.type.rsplit(":", 1)[-1]

    def extension(self, name: str) -> Any:
        """An extension member, or None."""
        return (self.model_extra or {}).get(name)

    def as_json(self) -> dict[str, Any]:
        """The document as JSON-ready data: the body of a ``application/problem+json`` response."""
        return self.model_dump(mode="json")


class Problem(Exception):
    """An error answered as ``application/problem+json``; raise it anywhere below a route."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def document(self, instance: str | None = None) -> ProblemDocument:
        return problem_document(self.status, self.kind, self.title, self.detail, instance, **self.extensions)


def problem_document(
    status: int, kind: str, title: str, detail: str, instance: str | None = None, **extensions: Any
) -> ProblemDocument:
    return ProblemDocument(
        type=_TYPE_PREFIX + kind, title=title, status=status, detail=detail, instance=instance or None, **extensions
    )


def from_domain_error(error: PhasescreenError) -> Problem:
    """The problem a domain error of the engine becomes."""
    status = next((code for cls, code in _STATUS.items() if isinstance(error, cls)), 422)
    return Problem(status, error.kind, _TITLES.get(error.kind, "Screening error"), scrub(str(error)))


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"no {what} with id {ident!r}")
