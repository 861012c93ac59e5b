"""The paper, as it states itself: its title, its claims (labelled as claims, never verified here), the phase
bands of S_NTK (METRICS §3) and the rule thresholds (§5). The numbers are the paper's; what phasescreen measures
of them lives in ``phasecore.study``. Below the kernels and the study alike, which both read the bands."""

from __future__ import annotations

import math
from typing import Any, Literal

Phase = Literal["chaotic", "optimal", "lazy", "undetermined"]

PAPER_TITLE = "Phase Incompatibility Explains Cross-Modal Alignment Failure: Evidence from 144 Model Pairs"
CLAIM_SOURCE = f"paper claim ({PAPER_TITLE}, 144 pairs); not verified by phasescreen"
#: how the paper's AGOP thresholds relate to the ratio phasescreen measures
UNCALIBRATED = (
    "the paper's threshold, set on its own undefined AGOP ratio; uncalibrated for λ_1/λ_k (see the study's "
    "cross-validated threshold)"
)

#: The source paper and the claims phasescreen reproduces as rules. Thresholds are the paper's.
PAPER: dict[str, Any] = {
    "title": PAPER_TITLE,
    "claims": {
        "phases": "S_NTK < 0.5 chaotic, 0.5 ≤ S_NTK < 0.9 optimal, S_NTK ≥ 0.9 lazy",
        "agop_rule": {"rule": "max agop_ratio > 1e6 predicts alignment failure", "accuracy": 0.94},
        "combined_rule": {
            "rule": "ΔNTK × log10(max agop_ratio) > 2.5 predicts alignment failure",
            "accuracy": 0.96,
        },
        "ntk_difference_rule": {"rule": "ΔNTK = |S_NTK^V − S_NTK^L| > 0.5 predicts alignment failure"},
        "cross_phase_rule": {"rule": "S_NTK^cross < 0.25: the pair is in the chaotic cross-modal phase"},
        "information_plane": "I(Y;T)/I(X;T) < 3.0 predicts failure",
        "failure": "alignment below 3% is a failure",
    },
}

CHAOTIC_BELOW = 0.5
LAZY_FROM = 0.9
AGOP_THRESHOLD = 1e6
COMBINED_THRESHOLD = 2.5
NTK_DIFFERENCE_THRESHOLD = 0.5
CROSS_CHAOTIC_BELOW = 0.25


def phase_of(s_ntk: float | None) -> Phase:
    """Phase of a model from its NTK stability S_NTK (METRICS §3, the paper's bands).

    ``S < 0.5`` chaotic, ``0.5 ≤ S < 0.9`` optimal, ``S ≥ 0.9`` lazy; ``"undetermined"`` for None, NaN or
    ±inf (no measured stability), rather than a band picked by a failed comparison.
    """
    s = float("nan") if s_ntk is None else float(s_ntk)
    if not math.isfinite(s):
        return "undetermined"
    if s < CHAOTIC_BELOW:
        return "chaotic"
    return "optimal" if s < LAZY_FROM else "lazy"
