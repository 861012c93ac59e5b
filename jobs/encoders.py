"""The encoders this process used last. A worker is one long-lived process per GPU, so keeping the few
most recent models loaded skips the load (often the slowest part of a small job) when a grid screens
the same model against many partners.

One encoder is used by one job at a time: the engine sets its parameters' ``requires_grad`` flags for θ (and
its train/eval mode) while it computes, and restores them afterwards, so two job threads of the embedded
executor on one model would see each other's flags. :meth:`EncoderCache.exclusive` holds a model for a job,
loading included (so it is loaded once); jobs on other models run side by side."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterator
from pathlib import Path
from typing import Any


class EncoderCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._encoders: OrderedDict[Hashable, Any] = OrderedDict()
        self._in_use: dict[str, threading.Lock] = {}  # model reference -> held by the job using it

    @contextlib.contextmanager
    def exclusive(self, model_ref: str, *, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Hold ``model_ref`` for one job; ``waiting`` is called about once a second while another job holds it
        (a job reports progress there, so it neither looks hung nor misses a cancellation)."""
        if not self._cacheable(model_ref):  # every job loads its own copy
            yield
            return
        with self._lock:
            lock = self._in_use.setdefault(model_ref, threading.Lock())
        while not lock.acquire(timeout=1.0):
            waiting()
        try:
            yield
        finally:
            lock.release()

    def _cacheable(self, model_ref: str) -> bool:
        return self.capacity > 0 and not model_ref.startswith("file:")  # files may change on disk

    def get(
        self,
        model_ref: str,
        *,
        pooling: str | None,
        model_root: Path | None,
        allowed_sources: Collection[str],
        device: str = "auto",
        max_params: int | None = None,
    ) -> Any:
        """The encoder of ``model_ref`` (a ``phasecore.sources.Encoder``) on ``device``, loaded or remembered."""
        from phasecore.sources import load_encoder

        # the allow-list is part of the key: a hit never bypasses the check the load made
        key = (model_ref, pooling, str(model_root), tuple(sorted(allowed_sources)), device)
        cacheable = self._cacheable(model_ref)
        with self._lock:
            if cacheable and key in self._encoders:
                self._encoders.move_to_end(key)
                return self._encoders[key]
        encoder = load_encoder(
            model_ref,
            model_root=model_root,
            allowed_sources=allowed_sources,
            pooling=pooling,
            device=device,
            max_params=max_params,
        )
        if cacheable:
            with self._lock:
                self._encoders[key] = encoder
                while len(self._encoders) > self.capacity:
                    self._encoders.popitem(last=False)
        return encoder

    def clear(self) -> None:
        with self._lock:
            self._encoders.clear()
