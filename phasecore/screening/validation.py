"""The checks of a screening request, light enough for the API process: no torch, no image read for the
built-in datasets (``digits``, ``shapes``), so a request is checked in well under a millisecond. Local runs and
the API call the same :func:`validate_request`; the API adds its deployment's limits before it."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from phasecore.data import sample_labels
from phasecore.groundtruth.mapfit import check_sample
from phasecore.references.registry import check_reference
from phasecore.settings import EngineSettings


def validate_dataset(dataset_ref: str, settings: EngineSettings, *, data_root: str | Path | None = None) -> None:
    """The dataset exists and holds N pairs, and (with ground truth on) every class has enough pairs for the
    K-fold and unseen-class tests."""
    labels = sample_labels(dataset_ref, n=settings.n, seed=settings.seed, data_root=data_root)
    if settings.ground_truth:
        check_sample(labels, settings.gt_folds)


def validate_request(
    vision_ref: str,
    language_ref: str,
    dataset_ref: str,
    settings: EngineSettings,
    *,
    allowed_sources: Collection[str] | None = None,
    model_root: str | Path | None = None,
    data_root: str | Path | None = None,
    allowed_models: Collection[str] = (),
) -> None:
    """Cheap checks before any work is queued: references parse, sources (and, when listed, models) are allowed,
    the dataset exists and holds N pairs, and (with ground truth on) every class has enough pairs for the K-fold
    and unseen-class tests. Raises a PhasescreenError with a message the user can act on. The one request check
    of the engine: local runs call it, and the API's ``normalize_request`` calls it after its deployment limits."""
    root = Path(model_root).expanduser() if model_root is not None else None
    for role, ref in (("vision", vision_ref), ("language", language_ref)):
        check_reference(ref, role, allowed_sources=allowed_sources, model_root=root, allowed_models=allowed_models)
    validate_dataset(dataset_ref, settings, data_root=data_root)
