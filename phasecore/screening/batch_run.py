"""Running a grid here, in this process: every model's profile once, then every pair step (the heavy half
of ``phasecore.screening.batch``, which holds the grid and the batch document and imports no torch)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phasecore.errors import PhasescreenError
from phasecore.screening.batch import Grid, PairCallback, batch_document
from phasecore.screening.pipeline import screen_pair
from phasecore.screening.profile import ModelProfile, ProfileCache, ProgressFn, compute_profile, versioned_profile_key
from phasecore.settings import EngineSettings


def run_grid(
    grid: Grid,
    settings: EngineSettings,
    *,
    cache: ProfileCache | None = None,
    model_root: str | Path | None = None,
    data_root: str | Path | None = None,
    allowed_sources: Collection[str] | None = None,
    progress: ProgressFn | None = None,
    on_pair: PairCallback | None = None,
    device: str | None = "cpu",
) -> dict[str, Any]:
    """Screen every pair of ``grid`` in this process: the embedded default of ``phasescreen batch``.

    Each model's profile is taken from ``cache`` or computed once (and cached), then every pair step runs on
    the two profiles. A model whose profile fails fails its pairs with the reason; the others go on.
    ``on_pair`` is called with each finished pair entry. Returns the batch document.
    """
    profiles: dict[tuple[str, str], ModelProfile | Exception] = {}

    def profile(ref: str, modality: str) -> ModelProfile | Exception:
        if (ref, modality) not in profiles:
            profiles[(ref, modality)] = _profile(
                ref,
                modality,
                grid.dataset,
                settings,
                cache=cache,
                model_root=model_root,
                data_root=data_root,
                allowed_sources=allowed_sources,
                progress=progress,
                device=device,
            )
        return profiles[(ref, modality)]

    pairs = []
    for i, vision_ref in enumerate(grid.vision):
        for j, language_ref in enumerate(grid.language):
            entry: dict[str, Any] = {
                "vision": vision_ref,
                "language": language_ref,
                "vision_index": i,
                "language_index": j,
                "state": "failed",
                "screening_id": None,
                "result": None,
                "problem": None,
            }
            vision, language = profile(vision_ref, "vision"), profile(language_ref, "language")
            if isinstance(vision, Exception):
                entry["problem"] = _problem(vision, "the vision model profile could not be computed")
            elif isinstance(language, Exception):
                entry["problem"] = _problem(language, "the language model profile could not be computed")
            else:
                try:
                    entry["result"] = screen_pair(
                        vision, language, settings, dataset_ref=grid.dataset, progress=progress
                    ).model_dump(mode="json")
                    entry["state"] = "succeeded"
                except Exception as exc:  # one broken pair must not lose the others' results
                    entry["problem"] = _problem(exc, "the pair step failed")
            pairs.append(entry)
            if on_pair:
                on_pair(entry)
        # vision profiles are needed by one row only; language profiles by every row
        profiles.pop((vision_ref, "vision"), None)
    return batch_document(grid, settings, pairs, created_at=datetime.now(UTC).isoformat())


def _profile(
    ref: str, modality: str, dataset: str, settings: EngineSettings, *, cache: ProfileCache | None, **kwargs: Any
) -> ModelProfile | Exception:
    try:
        key = versioned_profile_key(ref, modality, dataset, settings, model_root=kwargs.get("model_root"))
        cached = cache.get(key) if cache else None
        if cached is not None:
            return cached
        computed = compute_profile(ref, modality, dataset, settings, **kwargs)
        if cache:
            cache.put(computed)
        return computed
    except Exception as exc:  # recorded on every pair of this model
        return exc


def _problem(exc: Exception, what: str) -> dict[str, Any]:
    kind = exc.kind if isinstance(exc, PhasescreenError) else "internal-error"
    detail = str(exc) if isinstance(exc, PhasescreenError) else f"{type(exc).__name__}: {exc}"
    return {"type": f"urn:phasescreen:problem:{kind}", "title": what, "detail": detail}
