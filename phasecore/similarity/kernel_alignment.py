"""Kernel alignment and its permutation null (METRICS §2).

``A(K1, K2) = ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)`` is the paper's eq. 3; the centered form
``A(H K1 H, H K2 H)`` with ``H = I − 11ᵀ/N`` is CKA of the two kernels. Row ``i`` of both Grams is
pair ``i``, so a random permutation ``P`` of one side, ``A(K1, P K2 Pᵀ)``, is what the alignment of two
unrelated kernels with the same spectra looks like: the null without which a raw value is not interpretable.

The biased centered value shrinks with N (its null mean is ≈ 0.2 at N = 64, ≈ 0.04 at N = 576), so two forms
that compare across N sit beside it (METRICS §2 v2): the unbiased centered alignment (the U-statistic HSIC of
Song et al. 2012, as in unbiased CKA) and the excess over the null ``(A − null_mean) / (1 − null_mean)``. A
second null permutes only within classes (``groups``): class-template captions make any two models share the
class structure, so the plain null is beaten by construction; the within-class null asks whether the models
agree beyond the labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

Statistic = Literal["uncentered", "centered", "unbiased"]


@dataclass(frozen=True)
class NullResult:
    """A statistic next to its permutation null.

    ``observed`` is the statistic on the true pairing; ``mean``, ``std`` (ddof = 1) and ``p95`` (95th
    percentile) summarise the B null values; ``z = (observed − mean) / std`` (NaN when std = 0);
    ``p_value = (1 + #{null ≥ observed}) / (B + 1)`` is one-sided (large observed = aligned) and never 0;
    ``excess = (observed − mean) / (1 − mean)`` the share of the headroom above the null (NaN when mean = 1);
    ``within`` names the permutation scheme: ``"all"`` or ``"class"`` (permutations inside each class).
    """

    observed: float
    mean: float
    std: float
    p95: float
    z: float
    p_value: float
    permutations: int
    excess: float = math.nan
    within: Literal["all", "class"] = "all"

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-able copy; non-finite numbers (a NaN z of a constant null) become None."""
        return {
            k: (v if isinstance(v, int | str) or math.isfinite(v) else None) for k, v in asdict(self).items()
        }


def center_gram(K: np.ndarray) -> np.ndarray:
    """``H K H`` with ``H = I − 11ᵀ/N``, without forming H.

    K: (N, N) Gram. Returns (N, N) float64: ``K − row means − column means + grand mean``.
    """
    K = np.asarray(K, dtype=np.float64)
    centred: np.ndarray = K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()
    return centred


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


def unbiased_alignment(K1: np.ndarray, K2: np.ndarray) -> float:
    """Unbiased centered alignment ``HSIC_u(K1, K2) / sqrt(HSIC_u(K1, K1) HSIC_u(K2, K2))`` (METRICS §2 v2).

    The U-statistic HSIC of Song et al. 2012 (see ``UnbiasedHsic``): near 0 for unrelated kernels at any N,
    where the biased centered value's null mean falls like 1/N. Needs N ≥ 4; NaN when a denominator is not
    positive."""
    K1 = _check_gram(K1, "K1")
    K2 = _check_gram(K2, "K2")
    if K1.shape != K2.shape:
        raise ValueError(f"K1 {K1.shape} and K2 {K2.shape} must be Grams on the same N samples")
    return UnbiasedHsic(K1, K2).alignment(np.arange(K1.shape[0]))


def permutation_null(
    K1: np.ndarray,
    K2: np.ndarray,
    *,
    statistic: Statistic = "uncentered",
    permutations: int = 200,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> NullResult:
    """Permutation null of the kernel alignment (METRICS §2).

    Null values ``A(K1, P K2 Pᵀ)`` for B = ``permutations`` random permutations P drawn from
    ``numpy.random.default_rng(seed)``; rows and columns of K2 are permuted jointly, so the null kernel
    keeps K2's spectrum and only the pairing is broken.

    K1, K2: (N, N) Grams. statistic: ``"uncentered"`` (the paper's A), ``"centered"`` (CKA of kernels) or
    ``"unbiased"`` (``unbiased_alignment``). groups: (N,) class labels for the within-class null (each
    permutation moves samples only inside their class), or None for the plain null.
    Fast path: ‖P K2 Pᵀ‖_F = ‖K2‖_F and ``H P K Pᵀ H = P (H K H) Pᵀ`` (P1 = 1), so the (centered) Grams
    and norms are computed once and each permutation costs one index gather and one dot product.
    """
    if statistic not in ("uncentered", "centered", "unbiased"):
        raise ValueError(f"statistic must be 'uncentered', 'centered' or 'unbiased', not {statistic!r}")
    K1 = _check_gram(K1, "K1")
    K2 = _check_gram(K2, "K2")
    if K1.shape != K2.shape:
        raise ValueError(f"K1 {K1.shape} and K2 {K2.shape} must be Grams on the same N samples")
    n = K1.shape[0]
    if statistic == "unbiased":
        hsic = UnbiasedHsic(K1, K2)
        with threadpool_limits(limits=1, user_api="blas"):
            return null_distribution(
                hsic.alignment(np.arange(n)), hsic.alignment, n=n, permutations=permutations, seed=seed, groups=groups
            )
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
        return null_distribution(observed, alignment_of, n=n, permutations=permutations, seed=seed, groups=groups)


def null_distribution(
    observed: float,
    statistic_of: Callable[[np.ndarray], float],
    *,
    n: int,
    permutations: int = 200,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> NullResult:
    """Summarise a permutation null around an observed statistic.

    statistic_of(perm) returns the statistic with the second side re-paired by ``perm`` (N,) int, i.e.
    sample i paired with sample ``perm[i]``. B = ``permutations`` permutations come from
    ``numpy.random.default_rng(seed)``, so the same seed gives the same permutations for every statistic.
    With ``groups`` (N,) labels, each permutation moves samples only within their group (the within-class
    null of METRICS §2), drawn from ``default_rng([seed, 2])``.
    """
    if permutations < 1:
        raise ValueError(f"permutations must be ≥ 1, not {permutations}")
    perms: Iterator[np.ndarray]
    if groups is None:
        rng = np.random.default_rng(seed)
        perms = (rng.permutation(n) for _ in range(permutations))
    else:
        perms = within_group_permutations(np.asarray(groups), permutations, seed=seed)
    null = np.array([statistic_of(perm) for perm in perms], dtype=np.float64)
    result = summarise_null(observed, null)
    return replace(result, within="all" if groups is None else "class")


def within_group_permutations(groups: np.ndarray, permutations: int, *, seed: int = 0) -> Iterator[np.ndarray]:
    """``permutations`` permutations (N,) of the samples that keep every sample inside its group."""
    if groups.ndim != 1:
        raise ValueError(f"groups must be (N,) labels, got shape {groups.shape}")
    rng = np.random.default_rng([seed, 2])
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    for _ in range(permutations):
        perm = np.arange(groups.size)
        for idx in members:
            perm[idx] = idx[rng.permutation(idx.size)]
        yield perm


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
        excess=(observed - mean) / (1.0 - mean) if mean != 1.0 else math.nan,
    )


class UnbiasedHsic:
    """Unbiased HSIC (Song et al. 2012) of K against ``L[p][:, p]``; all but the pairing is cached.

    With ``K̃, L̃`` the Grams with zero diagonal, ``HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((N−1)(N−2))
    − 2/(N−2)·1ᵀK̃L̃1] / (N(N−3))``; ``alignment(p) = HSIC_u(K, PLPᵀ) / sqrt(HSIC_u(K, K) HSIC_u(L, L))``."""

    def __init__(self, K: np.ndarray, L: np.ndarray) -> None:
        n: int = K.shape[0]
        if n < 4:
            raise ValueError(f"the unbiased HSIC needs N ≥ 4 samples, got {n}")
        self.n = n
        self.K = K - np.diag(np.diag(K))
        self.L = L - np.diag(np.diag(L))
        self.rowsum_K, self.rowsum_L = self.K.sum(axis=1), self.L.sum(axis=1)
        self.sum_K, self.sum_L = float(self.rowsum_K.sum()), float(self.rowsum_L.sum())
        rK, rL = self.rowsum_K, self.rowsum_L
        self.hsic_KK = self._hsic(float(np.vdot(self.K, self.K)), self.sum_K**2, float(rK @ rK))
        self.hsic_LL = self._hsic(float(np.vdot(self.L, self.L)), self.sum_L**2, float(rL @ rL))

    def _hsic(self, trace: float, sums: float, cross: float) -> float:
        n = self.n
        return (trace + sums / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))

    def alignment(self, perm: np.ndarray) -> float:
        denom = self.hsic_KK * self.hsic_LL
        if not denom > 0:
            return math.nan
        trace = float(np.vdot(self.K, self.L[np.ix_(perm, perm)]))
        cross = float(self.rowsum_K @ self.rowsum_L[perm])
        return self._hsic(trace, self.sum_K * self.sum_L, cross) / math.sqrt(denom)


def _check_gram(K: np.ndarray, name: str) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) Gram, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} has non-finite entries")
    return K
