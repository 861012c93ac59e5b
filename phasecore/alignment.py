"""Kernel alignment and its permutation null (METRICS §2).

``A(K1, K2) = ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)`` is the paper's eq. 3; the centered form
``A(H K1 H, H K2 H)`` with ``H = I − 11ᵀ/N`` is CKA of the two kernels. Row ``i`` of both Grams is
pair ``i``, so a random permutation ``P`` of one side, ``A(K1, P K2 Pᵀ)``, is what the alignment of two
unrelated kernels with the same spectra looks like: the null without which a raw value is not interpretable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

Statistic = Literal["uncentered", "centered"]


@dataclass(frozen=True)
class NullResult:
    """A statistic next to its permutation null.

    ``observed`` is the statistic on the true pairing; ``mean``, ``std`` (ddof = 1) and ``p95`` (95th
    percentile) summarise the B null values; ``z = (observed − mean) / std`` (NaN when std = 0);
    ``p_value = (1 + #{null ≥ observed}) / (B + 1)`` is one-sided (large observed = aligned) and never 0.
    """

    observed: float
    mean: float
    std: float
    p95: float
    z: float
    p_value: float
    permutations: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-able copy; non-finite numbers (a NaN z of a constant null) become None."""
        return {k: (v if isinstance(v, int) or math.isfinite(v) else None) for k, v in asdict(self).items()}


def center_gram(K: np.ndarray) -> np.ndarray:
    """``H K H`` with ``H = I − 11ᵀ/N``, without forming H.

    K: (N, N) Gram. Returns (N, N) float64: ``K − row means − column means + grand mean``.
    """
    K = np.asarray(K, dtype=np.float64)
    return K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()


def kernel_alignment(K1: np.ndarray, K2: np.ndarray, *, centered: bool = False) -> float:
    """Kernel alignment ``A(K1, K2) = ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)`` (METRICS §2, the paper's eq. 3).

    K1, K2: (N, N) Gram matrices on the same N samples in the same order (row i of both is pair i).
    centered: use ``H K1 H`` and ``H K2 H`` (``H = I − 11ᵀ/N``), i.e. CKA of the two kernels.
    Accumulated in float64. Returns a float in [−1, 1] (in [0, 1] for PSD kernels); NaN when either
    (centered) Gram is zero, where the alignment is undefined.
    """
    K1 = _check_gram(K1, "K1")
    K2 = _check_gram(K2, "K2")
    if K1.shape != K2.shape:
        raise ValueError(f"K1 {K1.shape} and K2 {K2.shape} must be Grams on the same N samples")
    if centered:
        K1, K2 = center_gram(K1), center_gram(K2)
    denom = np.linalg.norm(K1) * np.linalg.norm(K2)
    if denom == 0.0:
        return math.nan
    return float(np.vdot(K1, K2) / denom)


def permutation_null(
    K1: np.ndarray,
    K2: np.ndarray,
    *,
    statistic: Statistic = "uncentered",
    permutations: int = 200,
    seed: int = 0,
) -> NullResult:
    """Permutation null of the kernel alignment (METRICS §2).

    Null values ``A(K1, P K2 Pᵀ)`` for B = ``permutations`` random permutations P drawn from
    ``numpy.random.default_rng(seed)``; rows and columns of K2 are permuted jointly, so the null kernel
    keeps K2's spectrum and only the pairing is broken.

    K1, K2: (N, N) Grams. statistic: ``"uncentered"`` (the paper's A) or ``"centered"`` (CKA of kernels).
    Fast path: ‖P K2 Pᵀ‖_F = ‖K2‖_F and ``H P K Pᵀ H = P (H K H) Pᵀ`` (P1 = 1), so the (centered) Grams
    and norms are computed once and each permutation costs one index gather and one dot product.
    """
    if statistic not in ("uncentered", "centered"):
        raise ValueError(f"statistic must be 'uncentered' or 'centered', not {statistic!r}")
    K1 = _check_gram(K1, "K1")
    K2 = _check_gram(K2, "K2")
    if K1.shape != K2.shape:
        raise ValueError(f"K1 {K1.shape} and K2 {K2.shape} must be Grams on the same N samples")
    if statistic == "centered":
        K1, K2 = center_gram(K1), center_gram(K2)
    denom = np.linalg.norm(K1) * np.linalg.norm(K2)
    if denom == 0.0:
        nan = math.nan
        return NullResult(nan, nan, nan, nan, nan, nan, permutations)

    def alignment_of(perm: np.ndarray) -> float:
        return float(np.vdot(K1, K2[np.ix_(perm, perm)]) / denom)

    observed = float(np.vdot(K1, K2) / denom)
    # single-threaded BLAS: B small dot products, where threads only add contention on a busy machine
    with threadpool_limits(limits=1, user_api="blas"):
        return null_distribution(observed, alignment_of, n=K1.shape[0], permutations=permutations, seed=seed)


def null_distribution(
    observed: float,
    statistic_of: Callable[[np.ndarray], float],
    *,
    n: int,
    permutations: int = 200,
    seed: int = 0,
) -> NullResult:
    """Summarise a permutation null around an observed statistic.

    statistic_of(perm) returns the statistic with the second side re-paired by ``perm`` (N,) int, i.e.
    sample i paired with sample ``perm[i]``. B = ``permutations`` permutations come from
    ``numpy.random.default_rng(seed)``, so the same seed gives the same permutations for every statistic.
    """
    if permutations < 1:
        raise ValueError(f"permutations must be ≥ 1, not {permutations}")
    rng = np.random.default_rng(seed)
    null = np.array([statistic_of(rng.permutation(n)) for _ in range(permutations)], dtype=np.float64)
    return summarise_null(observed, null)


def summarise_null(observed: float, null: np.ndarray) -> NullResult:
    """NullResult of an observed value and its B null values (B,) float."""
    null = np.asarray(null, dtype=np.float64)
    b = null.size
    if not math.isfinite(observed) or not np.all(np.isfinite(null)):
        nan = math.nan
        return NullResult(float(observed), nan, nan, nan, nan, nan, b)
    mean = float(null.mean())
    std = float(null.std(ddof=1)) if b > 1 else 0.0
    # ties count against the observed value (≥) so that a degenerate null never looks significant
    exceed = int(np.count_nonzero(null >= observed - 1e-12 * max(1.0, abs(observed))))
    return NullResult(
        observed=float(observed),
        mean=mean,
        std=std,
        p95=float(np.percentile(null, 95)),
        z=(observed - mean) / std if std > 0 else math.nan,
        p_value=(1 + exceed) / (b + 1),
        permutations=b,
    )


def _check_gram(K: np.ndarray, name: str) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) Gram, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} has non-finite entries")
    return K
