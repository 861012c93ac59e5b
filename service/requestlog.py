"""Request ids and the access log: every request gets an id (a sane inbound ``X-Request-ID``, or a new one),
echoed in the ``X-Request-ID`` response header and in problem documents (``request_id``), bound to the logging
context for every log line written while the request runs, and ends with one access line: method, route
template, status, duration_ms, client, and the ids the request touched."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.prometheus import bounded_labels
from store import logs
from store.models import is_id

access_log = logging.getLogger("phasescreen.access")

HEADER = "X-Request-ID"
#: an inbound request id is kept when it is 1 to 128 of these characters (a UUID, a hex or base64 token, a
#: proxy's trace id); anything else is replaced by a new id, so no client text of another shape reaches the logs
INBOUND_ID = re.compile(r"^[A-Za-z0-9._:+/=-]{1,128}$")
_LOCATION = re.compile(r"^/v1/(screenings|batches)/([0-9a-f-]{36})$")
_PATH_IDS = {"screening_id": "screening_id", "batch_id": "batch_id", "profile_id": "profile_id"}


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if INBOUND_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContext:
    """ASGI middleware: the request id, the logging context of the request, and its access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status, location = 500, ""
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                for name, value in headers:
                    if name == b"location":
                        location = value.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with logs.bind(request_id=request_id, tenant=None, screening_id=None, batch_id=None, profile_id=None):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._access(scope, status, location, started)

    @staticmethod
    def _access(scope: Scope, status: int, location: str, started: float) -> None:
        method, template = bounded_labels(scope)
        ids: dict[str, str] = {}
        for key, field in _PATH_IDS.items():
            value = (scope.get("path_params") or {}).get(key)
            if isinstance(value, str) and is_id(value):
                ids[field] = value
        created = _LOCATION.match(location)
        if created:  # a POST that created a screening or a batch: its id
            ids["screening_id" if created.group(1) == "screenings" else "batch_id"] = created.group(2)
        client = scope.get("client")
        with logs.bind(**{k: v for k, v in ids.items() if logs.current(k) is None}):
            access_log.info(
                "%s %s %d",
                method,
                template,
                status,
                extra={
                    "method": method,
                    "path": template,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
