"""The published OpenAPI document, corrected where FastAPI's generated one says something the API does not do.

- Every error is ``application/problem+json`` with the ProblemOut schema (FastAPI lists the model under
  ``application/json`` and leaves the problem media type without a schema).
- FastAPI's default 422 (``HTTPValidationError``, JSON) is replaced by the problem document the API sends.
- Every operation that reads a JSON body documents 400 (malformed JSON), 413 (body too large) and 422; every
  ``/v1`` operation documents 429 (rate limit) and 503 (database unavailable or busy), which any of them can
  answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from problems import PROBLEM_MEDIA_TYPE

_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemOut"}
_DESCRIPTIONS = {
    "400": "Bad request: malformed JSON, a bad header or cursor (problem document)",
    "401": "API key missing or wrong (problem document)",
    "403": "Not allowed: scope, model source (problem document)",
    "404": "Not found (problem document)",
    "409": "Conflict with the object's state (problem document)",
    "413": "Request body too large (problem document)",
    "422": "Invalid request: a field outside the schema, or a well-formed reference to a model or dataset this "
    "deployment cannot load, or settings it cannot run (problem document)",
    "429": "Too many requests; see Retry-After (problem document)",
    "503": "Database or queue unavailable, or the active-screenings limit reached; see Retry-After "
    "(problem document)",
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _problem(code: str, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    description = (existing or {}).get("description")
    if not description or description in ("Validation Error", "Successful Response") or code in _DESCRIPTIONS:
        description = _DESCRIPTIONS.get(code, description or "Error (problem document)")
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": dict(_PROBLEM_REF)}}}


def fix_document(document: dict[str, Any]) -> dict[str, Any]:
    """Apply the corrections above to a generated document (in place; returned for convenience)."""
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for code, response in list(responses.items()):
                content = response.get("content") or {}
                validation = "HTTPValidationError" in str(content)
                if PROBLEM_MEDIA_TYPE in content or validation:
                    responses[code] = _problem(code, response)
            wanted: list[str] = []
            if "requestBody" in operation:
                wanted += ["400", "413", "422"]
            if path.startswith("/v1/"):
                wanted += ["429", "503"]
            for code in wanted:
                if code not in responses:
                    responses[code] = _problem(code)
    schemas = document.get("components", {}).get("schemas", {})
    text = str(document.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and f"/{name}'" not in text:
            del schemas[name]
    return document


def install(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = fix_document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
