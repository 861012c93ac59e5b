"""Gram validity (METRICS §0): every Gram is symmetric and positive semi-definite up to round-off.

Checked before any spectrum is taken: ``‖G − Gᵀ‖_F ≤ 1e-8 ‖G‖_F`` and ``λ_min ≥ −1e-6 λ_1``. A Gram that fails
is an engine error (the profile fails with the figures), never clipped into shape: the mirrored-block bug of
engine 0.2.0 gave an asymmetric AGOP Gram with large negative eigenvalues that clipping had hidden.
"""

from __future__ import annotations

import numpy as np

from phasecore.errors import EngineError

SYMMETRY_RTOL = 1e-8
NEGATIVE_RTOL = 1e-6


def check_gram(gram: np.ndarray, what: str, *, eigenvalues: np.ndarray | None = None) -> np.ndarray:
    """Raise EngineError unless ``gram`` (n, n) is finite, symmetric and PSD to round-off.

    Returns the ascending eigenvalues (computed here when not given), so a caller that needs the spectrum
    takes it from the check instead of a second ``eigvalsh``."""
    G = np.asarray(gram, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise EngineError(f"the {what} Gram must be square, got shape {G.shape}")
    if not np.all(np.isfinite(G)):
        raise EngineError(f"the {what} Gram has non-finite entries")
    norm = float(np.linalg.norm(G))
    asymmetry = float(np.linalg.norm(G - G.T))
    if asymmetry > SYMMETRY_RTOL * norm:
        raise EngineError(
            f"the {what} Gram is not symmetric: ‖G − Gᵀ‖_F / ‖G‖_F = {asymmetry / norm:.2e} > {SYMMETRY_RTOL:g}"
        )
    lam = np.linalg.eigvalsh(G) if eigenvalues is None else np.asarray(eigenvalues, dtype=np.float64)
    if lam.size and lam[-1] > 0 and lam[0] < -NEGATIVE_RTOL * lam[-1]:
        raise EngineError(
            f"the {what} Gram is not positive semi-definite: λ_min / λ_1 = {lam[0] / lam[-1]:.2e} < "
            f"−{NEGATIVE_RTOL:g}"
        )
    return lam
