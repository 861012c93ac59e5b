"""The dataset check of a screening request, light enough for the API process: no torch, no image read for the
built-in datasets (``digits``, ``shapes``), so a request is checked in well under a millisecond."""

from __future__ import annotations

from pathlib import Path

from phasecore.data import sample_labels
from phasecore.groundtruth.mapfit import check_sample
from phasecore.settings import EngineSettings


def validate_dataset(dataset_ref: str, settings: EngineSettings, *, data_root: str | Path | None = None) -> None:
    """The dataset exists and holds N pairs, and (with ground truth on) every class has enough pairs for the
    K-fold and unseen-class tests."""
    labels = sample_labels(dataset_ref, n=settings.n, seed=settings.seed, data_root=data_root)
    if settings.ground_truth:
        check_sample(labels, settings.gt_folds)
