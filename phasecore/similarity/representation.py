"""Representation similarity of paired embeddings (METRICS §6, the Platonic Representation Hypothesis side).

On ``E_v (N, d_v)`` and ``E_l (N, d_l)``, row i of both being pair i: linear CKA with the biased and the
unbiased HSIC estimator, and mutual kNN. Each comes with the permutation null of METRICS §2: the rows of
``E_l`` are re-paired by a random permutation, which keeps both point clouds and breaks only the pairing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from phasecore.similarity.kernel_alignment import NullResult, UnbiasedHsic, center_gram, null_distribution


def linear_cka(E1: np.ndarray, E2: np.ndarray, *, unbiased: bool = False) -> float:
    """Linear CKA of two embeddings of the same N samples.

    E1: (N, d1), E2: (N, d2); features are centered (column means removed), then ``K = E1 E1ᵀ``,
    ``L = E2 E2ᵀ`` (N, N) float64 and ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    - biased (default): ``HSIC = tr(K H L H)``, i.e. ``A(HKH, HLH)`` of METRICS §2 (Kornblith et al. 2019).
      Invariant to orthogonal transforms and isotropic scaling of either side; 1 for identical inputs.
    - unbiased: the U-statistic of Song et al. 2012, with ``K̃, L̃`` the Grams with zero diagonal,
      ``HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((N−1)(N−2)) − 2/(N−2)·1ᵀK̃L̃1] / (N(N−3))``; near 0 for independent
      embeddings whatever d/N (the biased form is not). Needs N ≥ 4.

    Returns NaN where a denominator is not positive (a constant embedding).
    """
    K, L = _linear_grams(E1, E2)
    if not unbiased:
        K, L = center_gram(K), center_gram(L)
        denom = np.linalg.norm(K) * np.linalg.norm(L)
        return float(np.vdot(K, L) / denom) if denom > 0 else math.nan
    stats = UnbiasedHsic(K, L)
    return stats.alignment(np.arange(K.shape[0]))


def mutual_knn(E1: np.ndarray, E2: np.ndarray, *, k: int = 10) -> float:
    """Mutual k-nearest-neighbour overlap (METRICS §6).

    E1: (N, d1), E2: (N, d2). Cosine similarity on L2-normalised rows; ``kNN_1(i)`` are the k samples
    most similar to i in E1, itself excluded. Returns ``mean_i |kNN_1(i) ∩ kNN_2(i)| / k`` in [0, 1];
    a random pairing gives k/(N−1) in expectation. Ties are broken by sample index (stable sort).
    """
    nbrs1, nbrs2 = _neighbours(E1, k), _neighbours(E2, k)
    member = _membership(nbrs1)
    return _overlap(member, nbrs2)


def representation_similarity(
    E_v: np.ndarray,
    E_l: np.ndarray,
    *,
    k: int = 10,
    permutations: int = 200,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Linear CKA (biased and unbiased) and mutual kNN of ``E_v`` (N, d_v) and ``E_l`` (N, d_l), with nulls.

    Every null re-pairs the rows of E_l by the same B = ``permutations`` permutations drawn from
    ``numpy.random.default_rng(seed)``. Grams and neighbour lists are computed once; a permutation costs an
    index gather (``L[p][:, p]`` for CKA; for kNN, ``kNN_l'(i) = p⁻¹(kNN_l(p_i))``).

    Returns a dict with keys ``n``, ``k``, ``permutations``, ``seed``, ``cka``, ``cka_null``,
    ``cka_unbiased``, ``cka_unbiased_null``, ``mutual_knn``, ``mutual_knn_null``, ``mutual_knn_chance``
    (k/(N−1)); each ``*_null`` is ``NullResult.to_dict()`` (observed, mean, std, p95, z, p_value,
    permutations, excess, within). With ``labels`` (N,), also ``cka_within_class_null`` and
    ``mutual_knn_within_class_null``: the nulls of permutations inside each class (METRICS §2 v2).
    BLAS runs single-threaded inside (many small products; threads only add contention).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _representation_similarity(E_v, E_l, k=k, permutations=permutations, seed=seed, labels=labels)


def _representation_similarity(
    E_v: np.ndarray, E_l: np.ndarray, *, k: int, permutations: int, seed: int, labels: np.ndarray | None
) -> dict[str, Any]:
    K, L = _linear_grams(E_v, E_l)
    n = K.shape[0]

    Kc, Lc = center_gram(K), center_gram(L)
    denom = np.linalg.norm(Kc) * np.linalg.norm(Lc)

    def biased_of(perm: np.ndarray) -> float:
        return float(np.vdot(Kc, Lc[np.ix_(perm, perm)]) / denom) if denom > 0 else math.nan

    unbiased = UnbiasedHsic(K, L)

    nbrs_v, nbrs_l = _neighbours(E_v, k), _neighbours(E_l, k)
    member_v = _membership(nbrs_v)

    def knn_of(perm: np.ndarray) -> float:
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(n)
        return _overlap(member_v, inverse[nbrs_l[perm]])

    identity = np.arange(n)
    nulls: dict[str, NullResult] = {
        name: null_distribution(stat(identity), stat, n=n, permutations=permutations, seed=seed)
        for name, stat in (("cka", biased_of), ("cka_unbiased", unbiased.alignment), ("mutual_knn", knn_of))
    }
    out: dict[str, Any] = {"n": n, "k": k, "permutations": permutations, "seed": seed}
    for name, null in nulls.items():
        out[name] = null.observed if math.isfinite(null.observed) else None
        out[f"{name}_null"] = null.to_dict()
    out["mutual_knn_chance"] = k / (n - 1)
    if labels is not None:
        for name, stat in (("cka", biased_of), ("mutual_knn", knn_of)):
            null = null_distribution(stat(identity), stat, n=n, permutations=permutations, seed=seed, groups=labels)
            out[f"{name}_within_class_null"] = null.to_dict()
    return out


def _linear_grams(E1: np.ndarray, E2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear Grams (N, N) float64 of the column-centered embeddings."""
    X, Y = _as_embedding(E1, "E1"), _as_embedding(E2, "E2")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"E1 has {X.shape[0]} rows and E2 {Y.shape[0]}: the embeddings must be paired")
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    return X @ X.T, Y @ Y.T


def _neighbours(E: np.ndarray, k: int) -> np.ndarray:
    """(N, k) int indices of each row's k most cosine-similar other rows, ties broken by index."""
    X = _as_embedding(E, "E")
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N−1] = [1, {n - 1}], got {k}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X = X / np.where(norms > 0, norms, 1.0)
    sim = X @ X.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def _membership(nbrs: np.ndarray) -> np.ndarray:
    """(N, N) bool: ``member[i, j]`` when j is among the neighbours of i."""
    n = nbrs.shape[0]
    member = np.zeros((n, n), dtype=bool)
    member[np.arange(n)[:, None], nbrs] = True
    return member


def _overlap(member: np.ndarray, nbrs: np.ndarray) -> float:
    n, k = nbrs.shape
    return float(member[np.arange(n)[:, None], nbrs].sum() / (n * k))


def _as_embedding(E: np.ndarray, name: str) -> np.ndarray:
    X = np.asarray(E, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be an (N, d) embedding matrix, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} has non-finite entries")
    return X
