"""Engine settings of one screening (METRICS.md defaults). Stored with every result."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from phasecore import ENGINE_VERSION

#: Where models run: ``auto`` (the first GPU torch sees, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. A runtime
#: choice, not an engine setting: it changes float rounding only, so it is not part of any key.
DEVICE_SPEC = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class EngineSettings(BaseModel):
    """Every knob that changes a number. Defaults follow ../shared/docs/METRICS.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(576, ge=8, le=4096, description="paired samples N, balanced over classes (METRICS §0)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random draw (sample, probes, sketch, nulls)")
    probes: int | Literal["exact"] = Field(
        4, description="output probes M (Gaussian), or 'exact' for the d basis outputs (METRICS §1)"
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
        "all", description="parameters in θ: 'all', or 'last:K' for the last K blocks (METRICS §0)"
    )
    stability_steps: int = Field(10, ge=1, le=200, description="probe-training steps T (METRICS §3)")
    stability_subset: int = Field(128, ge=4, le=4096, description="probe-training subset n_s (METRICS §3)")
    null_permutations: int = Field(200, ge=10, le=10000, description="permutations B of every null (§2, §6)")
    knn_k: int = Field(10, ge=1, le=100, description="k of mutual kNN (METRICS §6)")
    agop_rtol: float = Field(1e-10, gt=0, lt=1, description="non-zero cut of the AGOP spectrum (METRICS §4)")
    agop_input_space: bool = Field(False, description="also compute the input-space AGOP (METRICS §4)")
    ground_truth: bool = Field(True, description="measure cross-modal alignment (METRICS §7)")
    gt_method: Literal["ridge", "procrustes", "infonce"] = Field("ridge", description="map W of METRICS §7")
    gt_folds: int = Field(5, ge=2, le=20, description="K of the stratified K-fold (METRICS §7)")
    failure_threshold: float = Field(0.03, ge=0, le=1, description="alignment_score below this = failed (§7)")
    info_plane: bool = Field(False, description="information-plane figures of METRICS §9")
    language_pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="pooling of the language encoder; None = the source's default (mean; last for GPT-2)"
    )

    def profile_fields(self) -> dict[str, object]:
        """The settings a model profile depends on (pair-level settings excluded, so profiles are shared)."""
        keys = ("n", "seed", "probes", "method", "sketch_dim", "params", "stability_steps", "stability_subset",
                "agop_rtol", "agop_input_space", "info_plane", "language_pooling", "memory_budget_gb")
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keys}

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the settings and the engine version."""
        payload = json.dumps({"settings": self.model_dump(mode="json"), "engine": ENGINE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()
