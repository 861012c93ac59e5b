"""Screenings as the API and the CLI's local mode share them: a request's canonical form and fingerprint, the
screening a caller may see, the cursor of a newest-first list, and a result computed outside the queue
(``phasescreen screen``, ``gate`` and ``batch`` on this machine) recorded as a succeeded screening.

Plain functions over a session; the API's submissions build on them in ``service.screenings``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from phasecore import ENGINE_VERSION
from phasecore.errors import PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings
from problems import Problem, not_found
from store.db import local_session
from store.models import SUCCEEDED, Screening, is_id, utcnow
from store.settings import ServiceSettings


@dataclass(frozen=True)
class NormalizedRequest:
    """A screening request in canonical form: what its fingerprint (reuse, Idempotency-Key replays) is of."""

    vision: str
    language: str
    dataset: str
    options: EngineSettings

    def to_dict(self) -> dict[str, Any]:
        return {
            "vision": self.vision,
            "language": self.language,
            "dataset": self.dataset,
            "options": self.options.model_dump(mode="json"),
        }

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the request and the engine version."""
        keyed = {**self.to_dict(), "options": self.options.keyed_fields()}
        canonical = json.dumps(keyed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{canonical}\n{ENGINE_VERSION}".encode()).hexdigest()

    def screening(self, **values: Any) -> Screening:
        """A new screening row of this request (not added to any session), with ``values`` besides."""
        return Screening(
            fingerprint=self.fingerprint,
            request=self.to_dict(),
            vision_ref=self.vision,
            language_ref=self.language,
            dataset_ref=self.dataset,
            cancel_requested=False,
            **values,
        )


def get_screening(session: Session, screening_id: str, tenant: str | None = None) -> Screening:
    """The screening, if ``tenant`` may see it (``None``: anyone); else 404, as for one that does not exist."""
    screening = session.get(Screening, screening_id) if is_id(screening_id) else None
    if screening is None or (tenant is not None and screening.tenant != tenant):
        raise not_found("screening", screening_id)
    return screening


def encode_cursor(row_id: str) -> str:
    """The cursor of the page after ``row_id``: the id itself (ids sort by creation)."""
    return row_id


def decode_cursor(cursor: str) -> str:
    """Any text of the id pattern is a position in the newest-first order (what follows it), so every cursor
    the schema allows is answered; anything else is 400."""
    if not is_id(cursor):
        raise Problem(400, "invalid-cursor", "Invalid cursor", "the cursor is not one this API returned")
    return cursor


def record_local_result(session: Session, request: dict[str, Any], result: ScreeningResult) -> Screening:
    """Store a result computed outside the queue (``phasescreen screen``) as a succeeded screening.

    ``request`` is ``{vision, language, dataset, options}``; the references are stored as given when they do
    not parse, since the result was computed already. Flushes, does not commit.
    """

    def canonical(text: Any) -> str:
        try:
            return ModelRef.parse(text).canonical()
        except PhasescreenError:
            return str(text)

    options = EngineSettings.model_validate(request.get("options") or {})
    normalized = NormalizedRequest(
        canonical(request.get("vision", "")),
        canonical(request.get("language", "")),
        str(request.get("dataset", "")).strip(),
        options,
    )
    now = utcnow()
    screening = normalized.screening(
        owner="local",
        state=SUCCEEDED,
        stage=None,
        progress=1.0,
        attempts=1,
        result=result,
        started_at=now,
        finished_at=now,
    )
    session.add(screening)
    session.flush()
    return screening


def store_local_result(
    request: dict[str, Any], result: ScreeningResult, settings: ServiceSettings | None = None
) -> str:
    """One call for the CLI: open the configured store (migrating the embedded file), record, commit."""
    with local_session(settings) as session:
        screening = record_local_result(session, request, result)
        session.commit()
        return screening.id
