"""Representation similarity: linear CKA (biased, unbiased) and mutual kNN with nulls (METRICS §6)."""

import json

import numpy as np
import pytest
from scipy.stats import ortho_group

from phasecore.similarity.kernel_alignment import kernel_alignment
from phasecore.similarity.representation import linear_cka, mutual_knn, representation_similarity


def _debiased_cka_reference(X: np.ndarray, Y: np.ndarray) -> float:
    """Kornblith et al.'s debiased CKA, written out with explicit loops over the U-statistic's terms."""
    X, Y = X - X.mean(0), Y - Y.mean(0)

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        n = len(a)
        K, L = a @ a.T, b @ b.T
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        term = sum(K[i, j] * L[j, i] for i in range(n) for j in range(n))
        term += K.sum() * L.sum() / ((n - 1) * (n - 2))
        term -= 2 / (n - 2) * sum(K[i].sum() * L[i].sum() for i in range(n))
        return term / (n * (n - 3))

    return hsic(X, Y) / np.sqrt(hsic(X, X) * hsic(Y, Y))


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_of_identical_embeddings_is_one(unbiased):
    E = np.random.default_rng(0).normal(size=(40, 8))
    assert linear_cka(E, E, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_invariant_to_an_orthogonal_transform_and_scale(unbiased):
    E = np.random.default_rng(1).normal(size=(40, 8))
    Q = ortho_group.rvs(8, random_state=2)
    assert linear_cka(E, 2.5 * E @ Q + 1.0, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)


def test_biased_cka_is_centered_kernel_alignment_of_linear_grams():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(30, 5)), rng.normal(size=(30, 9))
    assert linear_cka(X, Y) == pytest.approx(kernel_alignment(X @ X.T, Y @ Y.T, centered=True), rel=1e-12)


def test_unbiased_cka_matches_the_u_statistic_written_out():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(25, 4)), rng.normal(size=(25, 6))
    Y[:, :2] += X[:, :2]
    assert linear_cka(X, Y, unbiased=True) == pytest.approx(_debiased_cka_reference(X, Y), rel=1e-10)


def test_unbiased_cka_of_independent_embeddings_is_near_zero_where_the_biased_is_not():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(60, 300)), rng.normal(size=(60, 300))  # d ≫ N: the biased HSIC is inflated
    assert abs(linear_cka(X, Y, unbiased=True)) < 0.05
    assert linear_cka(X, Y) > 0.5


def test_mutual_knn_matches_a_set_based_reference():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(30, 5))
    Y = X + 0.8 * rng.normal(size=(30, 5))

    def knn_sets(E: np.ndarray, k: int) -> list[set[int]]:
        E = E / np.linalg.norm(E, axis=1, keepdims=True)
        sims = E @ E.T
        return [set(sorted((j for j in range(len(E)) if j != i), key=lambda j: -sims[i, j])[:k]) for i in range(len(E))]

    a, b = knn_sets(X, 4), knn_sets(Y, 4)
    expected = np.mean([len(a[i] & b[i]) / 4 for i in range(30)])
    assert mutual_knn(X, Y, k=4) == pytest.approx(expected)
    assert mutual_knn(X, X, k=4) == 1.0
    assert mutual_knn(X, 3.0 * X, k=4) == 1.0  # cosine: scale-free


def test_mutual_knn_rejects_k_out_of_range():
    X = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ValueError, match="k must be"):
        mutual_knn(X, X, k=5)


def _related_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    E_v = rng.normal(size=(n, 12))
    E_l = E_v @ rng.normal(size=(12, 8)) + 0.5 * rng.normal(size=(n, 8))
    return E_v, E_l


def test_representation_similarity_flags_a_true_pairing_and_not_a_shuffled_one():
    E_v, E_l = _related_pair(120, seed=7)
    out = representation_similarity(E_v, E_l, k=5, permutations=100, seed=0)
    assert set(out) == {
        "n", "k", "permutations", "seed", "cka", "cka_null", "cka_unbiased", "cka_unbiased_null",
        "mutual_knn", "mutual_knn_null", "mutual_knn_chance",
    }  # fmt: skip
    for name in ("cka", "cka_unbiased", "mutual_knn"):
        assert out[f"{name}_null"]["p_value"] == pytest.approx(1 / 101)
        assert out[name] == out[f"{name}_null"]["observed"]
    json.dumps(out, allow_nan=False)

    shuffled = E_l[np.random.default_rng(10).permutation(120)]  # p-values are uniform here
    out = representation_similarity(E_v, shuffled, k=5, permutations=100, seed=0)
    for name in ("cka", "cka_unbiased", "mutual_knn"):
        assert out[f"{name}_null"]["p_value"] > 0.05, name
    assert out["mutual_knn_null"]["mean"] == pytest.approx(out["mutual_knn_chance"], rel=0.15)


def test_fast_nulls_equal_recomputing_on_permuted_rows():
    E_v, E_l = _related_pair(40, seed=9)
    out = representation_similarity(E_v, E_l, k=4, permutations=15, seed=3)
    rng = np.random.default_rng(3)
    perms = [rng.permutation(40) for _ in range(15)]
    for name, stat in (
        ("cka", lambda p: linear_cka(E_v, E_l[p])),
        ("cka_unbiased", lambda p: linear_cka(E_v, E_l[p], unbiased=True)),
        ("mutual_knn", lambda p: mutual_knn(E_v, E_l[p], k=4)),
    ):
        assert out[f"{name}_null"]["mean"] == pytest.approx(np.mean([stat(p) for p in perms]), rel=1e-10), name
