"""Engine settings of one screening (the defaults of docs/metrics.md). Stored with every result.

Two groups, two models: ``ProfileSettings`` (everything a model profile depends on: its fields are the
profile key) and ``PairSettings`` (what only the pair step reads). ``EngineSettings`` is both at once, flat,
as requests and the CLI spell them (``{"n": 60, "knn_k": 5}``); it declares no field of its own, so a new
setting has to be put in one group or the other, and a profile-level one cannot miss the profile key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from phasecore import ENGINE_VERSION, METRICS_VERSION
from phasecore.errors import ExceedsWorkerBudget, ExceedsWorkerMemory
from phasecore.references.refs import ModelRef

#: Where models run: ``auto`` (the first GPU torch sees, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. A runtime
#: choice, not an engine setting: it changes float rounding only, so it is not part of any key.
DEVICE_SPEC = r"^(auto|cpu|cuda(:[0-9]+)?)$"

#: ``params``: all parameters, or those of the last K blocks (K written with at most 4 digits)
PARAMS_SPEC = r"^(all|last:[1-9][0-9]{0,3})$"

#: The output width d the memory estimate assumes for ``probes="exact"`` when the model's is not known before it
#: loads (the API never loads a model): wide enough for the encoders screened here, so the exact basis is for
#: small N only, as it is meant to be
EXACT_WIDTH_BOUND = 4096

#: At most this many Gaussian output probes M (the exact basis, ``probes="exact"``, is bounded by memory)
MAX_PROBES = 64


class ProfileSettings(BaseModel):
    """The settings a model profile depends on: every field here is part of the profile key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(576, ge=8, le=4096, description="paired samples N, balanced over classes (METRICS §0)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random draw (sample, probes, sketch, nulls)")
    probes: int | Literal["exact"] = Field(
        4, description=f"output probes M (Gaussian, 1..{MAX_PROBES}), or 'exact' for the d basis outputs (§1)"
    )
    method: Literal["auto", "exact", "sketch"] = Field(
        "auto",
        description="inner products exactly or by CountSketch; auto = exact when the per-sample "
        "representations fit memory_budget_gb, else sketch (the resolved method is recorded)",
    )
    memory_budget_gb: float = Field(4.0, gt=0, le=1024, description="memory the exact Gram may keep")
    chunk_size: int = Field(32, ge=1, le=1024, description="samples per forward/backward chunk")
    sketch_dim: int = Field(8192, ge=64, le=1 << 20, description="CountSketch width k (method=sketch)")
    params: str = Field(
        "all",
        pattern=PARAMS_SPEC,
        description="parameters in θ: 'all', or 'last:K' for the last K blocks (METRICS §0)",
    )
    stability_steps: int = Field(10, ge=1, le=200, description="probe-training steps T (METRICS §3)")
    stability_subset: int = Field(128, ge=4, le=4096, description="probe-training subset n_s (METRICS §3)")
    stability_lr_scales: tuple[float, ...] = Field(
        (1.0,),
        min_length=1,
        max_length=9,  # 8 given, and c = 1 which is always added: stored settings validate again
        description="step sizes η = c / λ_max of the probe training, one S_NTK per c (METRICS §3); the phase "
        "and the rules use c = 1, which always runs",
    )
    stability_precision: Literal["float32", "float64"] = Field(
        "float32",
        description="precision of the probe's K_0, training steps and Θ̂(θ_T) (METRICS §3): float64 gives an S_NTK "
        "that reproduces across thread counts and CPUs (float32: about ±0.005), at about 4x the probe's time on CPU",
    )
    agop_k: int = Field(16, ge=2, le=4096, description="k of agop_ratio = λ_1/λ_k (METRICS §4)")
    agop_censor_below: float = Field(
        1e-5, gt=0, lt=1, description="λ_k below this · λ_1 (the float32 floor): agop_ratio is a lower bound (§4)"
    )
    agop_unstable_log10: float = Field(
        0.3, gt=0, description="agop_unstable when a sub-block's ratio differs by more than this in log10 (§4)"
    )
    agop_rtol: float = Field(
        1e-6, gt=0, lt=1, description="the non-zero cut of agop_condition = λ_max/λ_min, the paper's form (§4)"
    )
    agop_input_space: bool = Field(False, description="also compute the input-space AGOP (METRICS §4)")
    info_plane: bool = Field(False, description="information-plane figures of METRICS §9, per model")
    language_pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="pooling of the language encoder; None = the source's default (mean; last for GPT-2)"
    )

    @field_validator("probes")
    @classmethod
    def _bounded_probes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_PROBES:
            raise ValueError(f"probes must be between 1 and {MAX_PROBES}, or 'exact'")
        return value

    @field_validator("stability_lr_scales")
    @classmethod
    def _positive_scales(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < c <= 64 for c in value):
            raise ValueError("every stability_lr_scales entry c must satisfy 0 < c ≤ 64")
        if len(set(value) - {1.0}) > 8:
            raise ValueError("stability_lr_scales takes at most 8 step sizes besides c = 1 (which always runs)")
        return tuple(sorted(set(value) | {1.0}))


class PairSettings(BaseModel):
    """The settings only the pair step reads (nulls, representation similarity, ground truth, outcome)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    null_permutations: int = Field(200, ge=10, le=10000, description="permutations B of every null (§2, §6)")
    knn_k: int = Field(10, ge=1, le=100, description="k of mutual kNN (METRICS §6)")
    ground_truth: bool = Field(True, description="measure cross-modal alignment (METRICS §7)")
    gt_method: Literal["ridge", "procrustes", "infonce"] = Field("ridge", description="map W of METRICS §7")
    gt_folds: int = Field(5, ge=2, le=20, description="K of the stratified K-fold (METRICS §7)")
    failure_threshold: float = Field(
        0.03, ge=0, le=1, description="τ of the outcome test: alignment_score against τ (METRICS §7)"
    )
    outcome_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="α of the outcome's sign-flip test: aligned / failed / inconclusive (§7)"
    )


#: pair-level settings that decide a pair's label: with the profile settings, they make the study's stratum
OUTCOME_FIELDS = ("ground_truth", "gt_method", "gt_folds", "failure_threshold", "outcome_alpha")


class EngineSettings(ProfileSettings, PairSettings):
    """Every knob that changes a number, flat. Defaults follow docs/metrics.md (metrics version 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def profile(self) -> ProfileSettings:
        return ProfileSettings.model_validate({k: getattr(self, k) for k in ProfileSettings.model_fields})

    @property
    def pair(self) -> PairSettings:
        return PairSettings.model_validate({k: getattr(self, k) for k in PairSettings.model_fields})

    def profile_fields(self) -> dict[str, object]:
        """The settings a model profile depends on (pair-level settings excluded, so profiles are shared)."""
        return _keyed(self.profile.model_dump(mode="json"))

    def keyed_fields(self) -> dict[str, object]:
        """Every setting as fingerprints hash them: a setting added later is left out at the value every earlier
        fingerprint meant, so adding one changes no stored fingerprint."""
        return _keyed(self.model_dump(mode="json"))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the settings and the engine version."""
        payload = json.dumps({"settings": self.keyed_fields(), "engine": ENGINE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def stratum(self, dataset_ref: str) -> dict[str, Any]:
        """The study's stratum of a pair screened with these settings (METRICS §8): the same dataset, profile
        settings, outcome settings and metrics version. ``key`` is the sha256 of the rest."""
        outcome = {k: getattr(self, k) for k in OUTCOME_FIELDS}
        body = {
            "dataset": dataset_ref,
            "metrics_version": METRICS_VERSION,
            "settings": {**self.profile_fields(), **outcome},
        }
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return {"key": key, **body}


#: settings added after keys were first stored, each with the value every earlier key meant: at that value the
#: field is left out of profile keys, fingerprints and strata, so stored profiles and results keep their keys
_ADDED_LATER = {"stability_precision": "float32"}


_ABSENT = object()


def _keyed(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as keys hash them: a later field at its earlier meaning is left out (:data:`_ADDED_LATER`)."""
    return {name: value for name, value in fields.items() if _ADDED_LATER.get(name, _ABSENT) != value}


def profile_key(
    model_ref: str, modality: str, dataset_ref: str, settings: EngineSettings, *, model_version: str | None = None
) -> str:
    """sha256 of the canonical (model, modality, dataset, profile settings, engine version), and of the model's
    content version where known (``references.registry.model_version``: package version, files, hub revision)."""
    payload: dict[str, Any] = {
        "model": ModelRef.parse(model_ref).canonical(),
        "modality": modality,
        "dataset": dataset_ref,
        "settings": settings.profile_fields(),
        "engine": ENGINE_VERSION,
    }
    if model_version is not None:  # absent: the keys of models without one stay what they were
        payload["model_version"] = model_version
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_GB = 2**30


def memory_estimate(settings: ProfileSettings, *, output_width: int | None = None) -> dict[str, int]:
    """Bytes one profile job of these settings may hold at once, by part: the cross-probe Gram (M·N)² float64
    (M = probes, or the output width d for 'exact': ``output_width`` or :data:`EXACT_WIDTH_BOUND`), the
    CountSketch M·N·k float64 (method sketch or auto) and the exact path's own ``memory_budget_gb`` (method
    exact or auto), with the sketch's per-chunk buffers. An upper bound: the engine uses at most N samples
    (U ≤ N)."""
    m = (output_width or EXACT_WIDTH_BOUND) if settings.probes == "exact" else int(settings.probes)
    n = settings.n
    parts = {"cross-probe Gram (M·N)² float64": (m * n) ** 2 * 8}
    if settings.method != "exact":
        parts[f"sketch M·N·k float64 (sketch_dim={settings.sketch_dim})"] = m * n * settings.sketch_dim * 8
        # each parameter group of each chunk is scattered into an (M, chunk, k) block in the model's float32,
        # then copied to float64 before it is added to the sketch
        chunk = min(settings.chunk_size, n)
        parts[f"sketch chunk buffers M·chunk·k float32 + float64 (sketch_dim={settings.sketch_dim})"] = (
            m * chunk * settings.sketch_dim * 12
        )
    if settings.method != "sketch":
        parts["memory_budget_gb"] = int(settings.memory_budget_gb * _GB)
    return parts


def _over_limit(parts: Mapping[str, float], limit: float) -> tuple[float, str] | None:
    """(total, the largest part's name) of an estimate above ``limit``; None within it."""
    total = sum(parts.values())
    if total <= limit:
        return None
    return total, max(parts, key=lambda name: parts[name])


def check_memory(
    settings: ProfileSettings, limit_gb: float, *, limit_name: str, output_width: int | None = None
) -> None:
    """Raise :class:`ExceedsWorkerMemory` when :func:`memory_estimate` exceeds ``limit_gb``."""
    parts = memory_estimate(settings, output_width=output_width)
    over = _over_limit(parts, limit_gb * _GB)
    if over is None:
        return
    total, largest = over
    m = "d" if settings.probes == "exact" else settings.probes
    raise ExceedsWorkerMemory(
        f"this request would need about {total / _GB:,.1f} GB (M={m}, N={settings.n}), mostly the {largest}: "
        f"{parts[largest] / _GB:,.1f} GB, above the {limit_gb:g} GB a worker has ({limit_name}); use a smaller n, "
        "fewer probes, a smaller sketch_dim or memory_budget_gb"
        + (f" ('exact' assumes outputs up to d={EXACT_WIDTH_BOUND} wide)" if settings.probes == "exact" else "")
    )


# --- compute -------------------------------------------------------------------------------------------------
#
# Seconds of one profile job on the reference machine: the 2-core CPU VM (23 GiB, torch 2.14.1, 2 threads) whose
# figures are in docs/benchmarks.md. Calibrated roughly (within about 2x; the machine was shared):
# - a kernel gradient pass (one probe, one sample, forward + backward) of the reference model, EfficientNet-Lite0 at
#   224 px: 90.7 s for 4 x 576 passes in the paper-size demo (docs/benchmarks.md) -> 0.04 s;
# - a stability-probe pass (one sample, one step, one step size): 113.5 s for 128 x 10 in the demo -> 0.09 s;
# - the sketch's bookkeeping, per cell of M.N.k and parameter tensor: probe_gram(method="sketch") on
#   timm test_efficientnet (47 tensors), N = 20, M = 64: k = 2^16 -> 2^18 added 60 s for 2.5e8 cells
#   -> 5e-9 s, times the reference model's ~150 parameter tensors (EfficientNet-Lite0 has 147);
# - the sketch's Gram, float64 matmul: 6-12 GMAC/s measured -> 1.2e-10 s per multiply-add.
# The model is not known at submission (the API loads none), so its cost is the reference model's: a larger
# model takes longer (PHASESCREEN_JOB_TIMEOUT still ends it), a smaller one less.

#: reference seconds of one kernel gradient pass (one probe, one sample)
PASS_SECONDS = 0.04
#: reference seconds of one stability-probe pass (one sample, one step, one step size)
STABILITY_PASS_SECONDS = 0.09
#: a float64 pass against a float32 one on a CPU (EfficientNet-Lite0, 32 images: 70 s against 17 s, Intel Xeon;
#: docs/benchmarks.md): no float64 oneDNN convolutions
FLOAT64_PASS_FACTOR = 4.0
#: parameter tensors of the reference model (each is sketched on its own)
REFERENCE_TENSORS = 150
#: reference seconds of one sketch cell (of M.N.k) of one parameter tensor
SKETCH_CELL_SECONDS = 5e-9
#: reference seconds of one float64 multiply-add of the Gram
MAC_SECONDS = 1.2e-10


def compute_estimate(
    settings: ProfileSettings, *, output_width: int | None = None, models: Sequence[ModelRef] = ()
) -> dict[str, float]:
    """Seconds one profile job of these settings takes on the reference machine (above), by part: the kernel's
    M·N gradient passes, the stability probe's passes, the CountSketch's bookkeeping (M·N·k cells per parameter
    tensor) and its Gram ((M·N)²·k multiply-adds), both for method sketch or auto. Rough (about 2x), for a
    model the size of EfficientNet-Lite0; its purpose is to refuse requests that would hold a worker for hours.
    ``models``: the references the job may load; a zoo tower whose run is not cached is trained by the job
    first, so each zoo reference adds its run's training estimate (``ZooRecipe.training_seconds``; counted
    whether or not a worker has it cached, which the API cannot know)."""
    m = (output_width or EXACT_WIDTH_BOUND) if settings.probes == "exact" else int(settings.probes)
    n = settings.n
    subset = min(settings.stability_subset, n)
    parts = {
        f"{m * n:,} kernel gradient passes (M·N)": m * n * PASS_SECONDS,
        "stability probe passes": subset
        * settings.stability_steps
        * len(settings.stability_lr_scales)
        * STABILITY_PASS_SECONDS
        * (FLOAT64_PASS_FACTOR if settings.stability_precision == "float64" else 1.0),
    }
    if settings.method != "exact":
        cells = m * n * settings.sketch_dim
        parts[f"sketch bookkeeping M·N·k per parameter tensor (sketch_dim={settings.sketch_dim})"] = (
            cells * REFERENCE_TENSORS * SKETCH_CELL_SECONDS
        )
        gram_macs = (m * n) ** 2 * settings.sketch_dim
        parts[f"sketch Gram (M·N)²·k (sketch_dim={settings.sketch_dim})"] = gram_macs * MAC_SECONDS
    for ref in models:
        if ref.source == "zoo":
            parts[f"training of {ref.canonical()}"] = ref.zoo_recipe.training_seconds()
    return parts


def check_compute(
    settings: ProfileSettings,
    limit_seconds: float,
    *,
    limit_name: str,
    output_width: int | None = None,
    models: Sequence[ModelRef] = (),
) -> None:
    """Raise :class:`ExceedsWorkerBudget` when :func:`compute_estimate` exceeds ``limit_seconds``."""
    parts = compute_estimate(settings, output_width=output_width, models=models)
    over = _over_limit(parts, limit_seconds)
    if over is None:
        return
    total, largest = over
    m = "d" if settings.probes == "exact" else settings.probes
    raise ExceedsWorkerBudget(
        f"this request would take about {_duration(total)} of a worker (M={m}, N={settings.n}, "
        f"sketch_dim={settings.sketch_dim}), mostly the {largest}: {_duration(parts[largest])}, above the "
        f"{limit_seconds:g} s a worker gives one job ({limit_name}); use a smaller n, fewer probes or a smaller "
        "sketch_dim, or a zoo recipe with fewer steps or a smaller width (estimated for a model the size of "
        "EfficientNet-Lite0 on a 2-core CPU)"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"
