"""Paired samples: (image, caption, label), the same N pairs in the same order for both encoders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedSample:
    sample_id: str  # stable within the dataset (e.g. "digits:1234")
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    caption: str
    label: int


@dataclass
class PairedDataset:
    """A balanced, seeded sample of N pairs."""

    name: str  # canonical dataset reference, e.g. "digits"
    samples: list[PairedSample]
    class_names: list[str]
    class_captions: dict[int, list[str]]  # caption templates per class (for prototypes t_c, METRICS §7)
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: explicit held-out groups for the outcome (METRICS §7), each ``{"classes": [int], "exclude": [int], ...}``:
    #: the group's classes, and the classes never fitted for it (those holding one of its held-out values).
    #: None: ``measure_alignment`` draws its seeded pairs of classes.
    outcome_groups: list[dict[str, Any]] | None = None

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.samples]

    @property
    def images(self) -> list[np.ndarray]:
        return [s.image for s in self.samples]

    @property
    def sample_ids(self) -> list[str]:
        return [s.sample_id for s in self.samples]

    @property
    def n_distinct_captions(self) -> int:
        return len(set(self.captions))

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the sample (stored with every result)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {
            "name": self.name,
            "n": self.n,
            "seed": self.seed,
            "n_classes": len(self.class_names),
            "class_names": self.class_names,
            "per_class": counts.tolist(),
            "n_distinct_captions": self.n_distinct_captions,
            "n_templates_per_class": min(len(v) for v in self.class_captions.values()),
            "sample_ids_sha256": _sha256_lines(self.sample_ids),
            **self.extra,
            **({"outcome_groups": self.outcome_groups} if self.outcome_groups is not None else {}),
        }


def _sha256_lines(lines: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()
