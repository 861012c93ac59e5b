"""Domain errors of the engine. Each carries a message a user can act on.

The service maps these to RFC 9457 problem documents; the CLI prints them and exits 2.
"""

from __future__ import annotations

import re


class PhasescreenError(Exception):
    """Base class of every error the engine raises on purpose."""

    #: short machine-readable kind, used as the problem type suffix
    kind = "error"


class InvalidReference(PhasescreenError, ValueError):
    """A model or dataset reference that cannot be parsed or resolved."""

    kind = "invalid-reference"


class SourceNotAllowed(PhasescreenError, PermissionError):
    """A reference to a source this deployment does not allow."""

    kind = "source-not-allowed"


class AssetUnavailable(PhasescreenError, FileNotFoundError):
    """Weights or data that are not present locally and cannot be fetched."""

    kind = "asset-unavailable"


class InvalidSettings(PhasescreenError, ValueError):
    """Engine settings out of range (N, probes, sketch size, ...)."""

    kind = "invalid-settings"


class ExceedsWorkerMemory(InvalidSettings):
    """Settings whose job would need more memory than a worker has (checked before any work)."""

    kind = "exceeds-worker-memory"


class ExceedsWorkerBudget(InvalidSettings):
    """Settings whose job would hold a worker longer than it gives one job (checked before any work)."""

    kind = "exceeds-worker-budget"


class UnsupportedModel(PhasescreenError, TypeError):
    """A model whose parameters the kernel engine cannot attribute per sample."""

    kind = "unsupported-model"


class EngineError(PhasescreenError, RuntimeError):
    """The engine produced a number that fails its own checks (a Gram that is not symmetric PSD, ...): a bug
    or a numerical breakdown, reported with the figures rather than clipped into shape."""

    kind = "engine-error"


class DeviceOutOfMemory(PhasescreenError, MemoryError):
    """The device (a GPU, or the host for a CPU run) ran out of memory even at a smaller chunk; the message
    says about how much the step needs and how much the device has free."""

    kind = "out-of-memory"


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_ABS_PATH = re.compile(r"(?<![\w.~/-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"()\[\]{},;:]+)+[/\\]?")
_HOST = re.compile(
    r"\b(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:com|co|io|org|net|ai|dev|local|internal|lan|cloud)\b",
    re.IGNORECASE,
)
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")


def scrub(text: str) -> str:
    """``text`` with URLs, host names, IP addresses and absolute paths taken out (a path becomes its last
    part): what may reach an API client of a library's message."""
    text = _URL.sub("<url>", text)
    text = _ABS_PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)
    text = _HOST.sub("<host>", text)
    return _IPV4.sub("<address>", text)


def describe(error: BaseException) -> str:
    """``Type: message`` of a library's exception, scrubbed (``scrub``) and cut to 300 characters."""
    message = scrub(str(error))
    message = message if len(message) <= 300 else message[:297] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
