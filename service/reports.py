"""The HTML report of a batch, rendered once per distinct batch document.

Rendering draws four matplotlib figures (about a second of CPU for a small grid, more for a large one, all of
it in a request thread); the document of a finished batch never changes, so the page is kept, keyed by the
sha256 of the document, in a small LRU per process. Concurrent requests for the same document wait for one
rendering instead of each drawing it. The key doubles as the page's ETag.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any


def document_etag(document: Mapping[str, Any]) -> str:
    """A strong ETag of a batch document (its canonical JSON's sha256, shortened)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


class ReportCache:
    """``{etag: html}``, at most ``size`` pages; ``render`` runs at most once per etag at a time."""

    def __init__(self, size: int = 32, render: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        self.size = size
        self._render = render
        self._pages: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._rendering: dict[str, threading.Lock] = {}
        self.renders = 0  # pages drawn (for tests and the benchmark)

    def page(self, document: Mapping[str, Any], etag: str | None = None) -> tuple[str, str]:
        """``(etag, html)`` of ``document``."""
        etag = etag or document_etag(document)
        with self._lock:
            if etag in self._pages:
                self._pages.move_to_end(etag)
                return etag, self._pages[etag]
            gate = self._rendering.setdefault(etag, threading.Lock())
        with gate:  # one rendering per document; the others wait for it and read the result
            with self._lock:
                if etag in self._pages:
                    return etag, self._pages[etag]
            html = self._draw(document)
            with self._lock:
                self.renders += 1
                self._pages[etag] = html
                while len(self._pages) > self.size:
                    self._pages.popitem(last=False)
                self._rendering.pop(etag, None)
        return etag, html

    def _draw(self, document: Mapping[str, Any]) -> str:
        if self._render is not None:
            return self._render(document)
        from phasecore.presentation.report import inline_html  # matplotlib: imported on the first report only

        return inline_html(document)
