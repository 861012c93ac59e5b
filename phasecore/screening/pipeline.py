"""One screening: two model profiles, then the cheap pair step (METRICS §2, §5–§7).

``compute_profile`` (per model) is the expensive part and is shared between pairs; ``screen_pair``
turns two profiles into the result JSON (``phasecore.screening.result.ScreeningResult``) in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from phasecore import ENGINE_VERSION, METRICS_VERSION
from phasecore.errors import InvalidSettings
from phasecore.groundtruth.mapfit import measure_alignment
from phasecore.paper import PAPER
from phasecore.screening.paper_rules import pair_rules
from phasecore.screening.profile import ModelProfile, ProfileCache, ProgressFn, compute_profile, versioned_profile_key
from phasecore.screening.result import ScreeningResult
from phasecore.screening.validation import validate_dataset, validate_request
from phasecore.settings import EngineSettings, profile_key
from phasecore.similarity.kernel_alignment import permutation_null
from phasecore.similarity.representation import representation_similarity

__all__ = [
    "ModelProfile",
    "ProfileCache",
    "ProgressFn",
    "compute_profile",
    "profile_key",
    "screen",
    "screen_pair",
    "versioned_profile_key",
    "validate_dataset",
    "validate_request",
]

def _null(
    K1: np.ndarray, K2: np.ndarray, statistic: str, settings: EngineSettings, groups: np.ndarray | None = None
) -> dict[str, Any]:
    return permutation_null(
        K1,
        K2,
        statistic=statistic,  # type: ignore[arg-type]  # callers pass one of the Literal statistics
        permutations=settings.null_permutations,
        seed=settings.seed,
        groups=groups,
    ).to_dict()


def screen_pair(
    vision: ModelProfile,
    language: ModelProfile,
    settings: EngineSettings,
    *,
    dataset_ref: str,
    progress: ProgressFn | None = None,
) -> ScreeningResult:
    """The typed result of one pair from its two profiles (METRICS §2, §5–§8, version 2)."""
    started = time.perf_counter()
    if vision.modality != "vision" or language.modality != "language":
        raise InvalidSettings("screen_pair takes a vision profile and a language profile, in that order")
    dv, dl = vision.meta["dataset"], language.meta["dataset"]
    if dv["sample_ids_sha256"] != dl["sample_ids_sha256"]:
        raise InvalidSettings("the two profiles were computed on different dataset samples")
    for profile in (vision, language):
        if profile.meta.get("engine_version") != ENGINE_VERSION:
            raise InvalidSettings(
                f"the {profile.modality} profile was computed by engine {profile.meta.get('engine_version')}, "
                f"not {ENGINE_VERSION}: recompute it (metrics version {METRICS_VERSION})"
            )

    def report(fraction: float) -> None:
        if progress:
            progress("pair", fraction)

    K_v, K_l = vision.arrays["ntk"], language.arrays["ntk"]
    E_v, E_l = vision.arrays["embeddings"], language.arrays["embeddings"]
    labels = vision.arrays["labels"]
    null_c = _null(K_v, K_l, "centered", settings)
    null_u = _null(K_v, K_l, "uncentered", settings)
    null_unbiased = _null(K_v, K_l, "unbiased", settings)
    null_within = _null(K_v, K_l, "centered", settings, groups=labels)
    report(0.3)
    representation = representation_similarity(
        E_v, E_l, k=settings.knn_k, permutations=settings.null_permutations, seed=settings.seed, labels=labels
    )
    report(0.5)
    stab_v, stab_l = vision.meta["stability"], language.meta["stability"]
    agop_v, agop_l = vision.meta["agop"], language.meta["agop"]
    derived, predictions = pair_rules(
        s_ntk_vision=stab_v["s_ntk"],
        s_ntk_language=stab_l["s_ntk"],
        agop_ratio_vision=agop_v["ratio"],
        agop_ratio_language=agop_l["ratio"],
        s_ntk_cross=null_u["observed"],
        agop_censored=(agop_v["censored"], agop_l["censored"]),
        agop_unstable=(agop_v["unstable"], agop_l["unstable"]),
        agop_reasons=(agop_v["reason"], agop_l["reason"]),
    )
    for role, profile in (("vision", vision), ("language", language)):
        derived["notes"].extend(_phase_edge_notes(role, profile.meta["stability"].get("s_ntk")))
    ground_truth = None
    tick = time.perf_counter()
    if settings.ground_truth:
        ground_truth = measure_alignment(
            E_v,
            E_l,
            labels,
            language.arrays["prototypes"],
            captions=language.meta["captions"],
            method=settings.gt_method,
            folds=settings.gt_folds,
            seed=settings.seed,
            failure_threshold=settings.failure_threshold,
            outcome_alpha=settings.outcome_alpha,
            # a dataset's own held-out construction (shapes: held-out colours and shapes), else seeded pairs
            held_out_groups=dv.get("outcome_groups"),
        )
    report(0.9)
    metrics = {
        "s_ntk_cross": null_u["observed"],
        "s_ntk_cross_centered": null_c["observed"],
        "s_ntk_cross_unbiased": null_unbiased["observed"],
        "s_ntk_cross_null": null_u,
        "s_ntk_cross_centered_null": null_c,
        "s_ntk_cross_unbiased_null": null_unbiased,
        "s_ntk_cross_centered_within_class_null": null_within,
        "s_ntk_vision": stab_v["s_ntk"],
        "s_ntk_language": stab_l["s_ntk"],
        "phase_vision": derived["phase_vision"],
        "phase_language": derived["phase_language"],
        "agop_ratio_vision": agop_v["ratio"],
        "agop_ratio_language": agop_l["ratio"],
        "agop_condition_vision": agop_v["condition"],
        "agop_condition_language": agop_l["condition"],
        "delta_ntk": derived["delta_ntk"],
        "log_agop": derived["log_agop"],
        "combined": derived["combined"],
        "cka": representation["cka"],
        "mutual_knn": representation["mutual_knn"],
        "representation": representation,
        "agop_vision": agop_v,
        "agop_language": agop_l,
        "agop_inputs_vision": vision.meta.get("agop_inputs"),
        "agop_inputs_language": language.meta.get("agop_inputs"),
        "info_plane_vision": vision.meta.get("info_plane"),
        "info_plane_language": language.meta.get("info_plane"),
        "stability_vision": stab_v,
        "stability_language": stab_l,
        "notes": derived.get("notes", []),
    }
    timings = {f"vision_{k}": v for k, v in vision.meta["timings"].items()}
    timings.update({f"language_{k}": v for k, v in language.meta["timings"].items()})
    timings["ground_truth"] = time.perf_counter() - tick
    timings["pair"] = time.perf_counter() - started
    distinct = {"vision": vision.meta.get("distinct_inputs"), "language": language.meta.get("distinct_inputs")}
    result = ScreeningResult.model_validate(
        {
            "vision": _model_summary(vision),
            "language": _model_summary(language),
            "dataset": {**dv, "ref": dataset_ref, "distinct_inputs": distinct},
            "settings": settings.model_dump(mode="json"),
            "metrics": metrics,
            "ground_truth": ground_truth,
            "predictions": predictions,
            "paper": PAPER,
            "timings": timings,
            "engine_version": ENGINE_VERSION,
            "metrics_version": METRICS_VERSION,
            "stratum": settings.stratum(dataset_ref),
        }
    )
    report(1.0)
    return result


#: How far float rounding alone moved S_NTK between two exact-to-1e-8 kernel paths (docs/metrics.md §3).
S_NTK_ROUNDING = 0.005


def _phase_edge_notes(role: str, s_ntk: float | None) -> list[str]:
    """A note when S_NTK lies so close to a phase edge (0.5, 0.9) that rounding could flip the phase."""
    if s_ntk is None or not np.isfinite(s_ntk):
        return []
    return [
        f"the {role} S_NTK {s_ntk:.4f} lies within {S_NTK_ROUNDING} of the phase edge {edge}: float rounding in "
        "the probe training moves S_NTK by about that much, so the phase may differ on another device or engine"
        for edge in (0.5, 0.9)
        if abs(s_ntk - edge) < S_NTK_ROUNDING
    ]


def _model_summary(profile: ModelProfile) -> dict[str, Any]:
    return {"identity": profile.identity, "profile_key": profile.key, "kernel": profile.meta["kernel"]}


def screen(
    vision_ref: str,
    language_ref: str,
    dataset_ref: str,
    settings: EngineSettings,
    *,
    cache: ProfileCache | None = None,
    progress: ProgressFn | None = None,
    model_root: str | Path | None = None,
    data_root: str | Path | None = None,
    allowed_sources: Collection[str] | None = None,
    device: str | None = "cpu",
) -> ScreeningResult:
    """Profiles (from ``cache`` when present) then the pair step: the embedded default's screening.
    ``device``: where models run (``auto``, ``cpu``, ``cuda[:N]``; see ``phasecore.sources.resolve_device``)."""
    profiles = []
    for ref, modality in ((vision_ref, "vision"), (language_ref, "language")):
        key = versioned_profile_key(ref, modality, dataset_ref, settings, model_root=model_root)
        profile = cache.get(key) if cache else None
        if profile is None:
            profile = compute_profile(
                ref,
                modality,
                dataset_ref,
                settings,
                model_root=model_root,
                data_root=data_root,
                allowed_sources=allowed_sources,
                progress=progress,
                device=device,
            )
            if cache:
                cache.put(profile)
        profiles.append(profile)
    return screen_pair(profiles[0], profiles[1], settings, dataset_ref=dataset_ref, progress=progress)
