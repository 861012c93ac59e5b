"""The encoders this process used last. A worker is one long-lived process per GPU, so keeping the few
most recent models loaded skips the load (often the slowest part of a small job) when a grid screens
the same model against many partners. The engine never changes a model it is given (the stability probe
trains a copy), so sharing one between jobs is safe."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Hashable
from pathlib import Path
from typing import Any


class EncoderCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._encoders: OrderedDict[Hashable, Any] = OrderedDict()

    def get(
        self,
        model_ref: str,
        *,
        pooling: str | None,
        model_root: Path | None,
        allowed_sources: Collection[str],
        device: str = "auto",
    ) -> Any:
        """The encoder of ``model_ref`` (a ``phasecore.sources.Encoder``) on ``device``, loaded or remembered."""
        from phasecore.sources import load_encoder

        # the allow-list is part of the key: a hit never bypasses the check the load made
        key = (model_ref, pooling, str(model_root), tuple(sorted(allowed_sources)), device)
        cacheable = self.capacity > 0 and not model_ref.startswith("file:")  # files may change on disk
        with self._lock:
            if cacheable and key in self._encoders:
                self._encoders.move_to_end(key)
                return self._encoders[key]
        encoder = load_encoder(
            model_ref, model_root=model_root, allowed_sources=allowed_sources, pooling=pooling, device=device
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
