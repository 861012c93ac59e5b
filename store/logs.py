"""Logs of ``phasescreen serve`` and ``phasescreen worker``: one JSON object per line (or, for people, one
escaped text line), every line carrying the ids of the request or job it belongs to.

Context: :func:`bind` sets ``request_id``, ``tenant``, ``screening_id``, ``batch_id``, ``profile_id`` in context
variables for the duration of a ``with`` block (the API's request middleware, the worker's job functions); every
log call made inside -- in any module, in threads the block starts with a copied context -- carries them.

Safety: text a client chose (model references, dataset names, header values) reaches the log only inside a
JSON string value, escaped, so it can never start a line or forge one. The text format escapes control
characters and indents every continuation line (tracebacks), for the same reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any, Literal

LogFormat = Literal["json", "text"]

#: the ids a log line may carry, in the order the text format prints them
CONTEXT_FIELDS = ("request_id", "tenant", "screening_id", "batch_id", "profile_id")
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"phasescreen_log_{name}", default=None) for name in CONTEXT_FIELDS
}
#: attributes every LogRecord has; anything else on a record came from ``extra=`` and is written as a field
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


@contextlib.contextmanager
def bind(**ids: str | None) -> Iterator[None]:
    """Set context ids (only those given, ``None`` included) until the block ends."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_context(**ids: str | None) -> None:
    """Set context ids for the rest of the current context (a request's task: the middleware's copy)."""
    for name, value in ids.items():
        _VARS[name].set(value)


def current(name: str) -> str | None:
    return _VARS[name].get()


def context() -> dict[str, str]:
    return {name: value for name, var in _VARS.items() if (value := var.get()) is not None}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", <ids>, <extra fields>, "exc"}`` on one line (ASCII: every control
    character and line separator escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(context())
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=True, default=str)


def _escaped(text: str) -> str:
    """Control characters (line breaks included) as escapes: the text stays on its line."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [ids] msg key=value...``; the message and fields escaped, tracebacks indented."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{name}={_escaped(value)}" for name, value in context().items())
        fields = " ".join(f"{key}={_escaped(str(value))}" for key, value in _extras(record).items())
        line = " ".join(
            part
            for part in (
                _timestamp(record),
                record.levelname,
                record.name,
                f"[{ids}]" if ids else "",
                _escaped(record.getMessage()),
                fields,
            )
            if part
        )
        if record.exc_info:
            trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            line += "".join(f"\n    | {_escaped(part)}" for part in trace.splitlines())
        return line


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str = "INFO", fmt: LogFormat = "json", stream: Any = None) -> logging.Handler:
    """One handler on the root logger, writing ``fmt`` lines to ``stream`` (stderr); uvicorn's and RQ's
    loggers go through it (uvicorn's access lines are off: the API's middleware writes its own, with ids)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "rq.worker", "rq"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    return handler
