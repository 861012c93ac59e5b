"""Kernel alignment and its permutation null (METRICS §2)."""

import json
import math

import numpy as np
import pytest

from phasecore.similarity.kernel_alignment import NullResult, kernel_alignment, permutation_null


def _gram(n: int, d: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, d))
    return X @ X.T


def _reference_alignment(K1: np.ndarray, K2: np.ndarray, centered: bool) -> float:
    if centered:
        H = np.eye(len(K1)) - np.ones_like(K1) / len(K1)
        K1, K2 = H @ K1 @ H, H @ K2 @ H
    return float(np.trace(K1 @ K2) / np.sqrt(np.trace(K1 @ K1) * np.trace(K2 @ K2)))


@pytest.mark.parametrize("centered", [False, True])
def test_alignment_of_a_kernel_with_itself_is_one(centered):
    K = _gram(30, 5, seed=0)
    assert kernel_alignment(K, K, centered=centered) == pytest.approx(1.0, abs=1e-12)
    assert kernel_alignment(K, 3.0 * K, centered=centered) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("centered", [False, True])
def test_alignment_matches_the_definition_with_an_explicit_H(centered):
    K1, K2 = _gram(25, 4, seed=1), _gram(25, 7, seed=2)
    expected = _reference_alignment(K1, K2, centered)
    assert kernel_alignment(K1, K2, centered=centered) == pytest.approx(expected, rel=1e-12)
    assert kernel_alignment(K1, K2, centered=centered) < 0.999


@pytest.mark.parametrize("centered", [False, True])
def test_alignment_is_invariant_to_a_joint_permutation_of_the_samples(centered):
    K1, K2 = _gram(40, 3, seed=3), _gram(40, 6, seed=4)
    p = np.random.default_rng(5).permutation(40)
    before = kernel_alignment(K1, K2, centered=centered)
    after = kernel_alignment(K1[np.ix_(p, p)], K2[np.ix_(p, p)], centered=centered)
    assert after == pytest.approx(before, rel=1e-12)


def test_centering_removes_the_shared_constant_that_inflates_the_uncentered_value():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(50, 4)) + 5.0, rng.normal(size=(50, 4)) + 5.0  # independent, large mean
    K1, K2 = X @ X.T, Y @ Y.T
    assert kernel_alignment(K1, K2) > 0.9
    assert abs(kernel_alignment(K1, K2, centered=True)) < 0.5


def test_zero_kernel_gives_nan_and_bad_shapes_raise():
    K = _gram(10, 2, seed=0)
    assert math.isnan(kernel_alignment(np.ones((10, 10)), K, centered=True))
    with pytest.raises(ValueError, match="same N"):
        kernel_alignment(K, _gram(11, 2, seed=0))
    with pytest.raises(ValueError, match="square"):
        kernel_alignment(np.ones((3, 4)), np.ones((3, 4)))


@pytest.mark.parametrize("statistic", ["uncentered", "centered"])
def test_fast_null_equals_recomputing_each_permuted_alignment(statistic):
    K1, K2 = _gram(20, 3, seed=7), _gram(20, 3, seed=8)
    null = permutation_null(K1, K2, statistic=statistic, permutations=30, seed=11)
    rng = np.random.default_rng(11)
    values = []
    for _ in range(30):
        p = rng.permutation(20)
        values.append(kernel_alignment(K1, K2[np.ix_(p, p)], centered=statistic == "centered"))
    assert null.mean == pytest.approx(np.mean(values), rel=1e-12)
    assert null.std == pytest.approx(np.std(values, ddof=1), rel=1e-10)
    assert null.p95 == pytest.approx(np.percentile(values, 95), rel=1e-12)
    assert null.observed == pytest.approx(kernel_alignment(K1, K2, centered=statistic == "centered"))


def test_a_true_pairing_stands_out_of_its_null():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6))
    K1 = X @ X.T
    Z = X @ rng.normal(size=(6, 6)) + 0.3 * rng.normal(size=(80, 6))
    null = permutation_null(K1, Z @ Z.T, statistic="centered", permutations=200, seed=0)
    assert null.p_value == pytest.approx(1 / 201)
    assert null.z > 5
    assert null.observed > null.p95


def test_a_mismatched_pairing_falls_to_the_null():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 6))
    Z = X @ rng.normal(size=(6, 6)) + 0.3 * rng.normal(size=(80, 6))
    wrong = rng.permutation(80)  # a pairing error: the second model saw the samples in another order
    K1, K2 = X @ X.T, Z[wrong] @ Z[wrong].T
    for statistic in ("uncentered", "centered"):
        null = permutation_null(K1, K2, statistic=statistic, permutations=200, seed=0)
        assert null.p_value > 0.05
        assert abs(null.z) < 3


def test_null_result_is_deterministic_and_json_safe():
    K1, K2 = _gram(15, 2, seed=1), _gram(15, 2, seed=2)
    a = permutation_null(K1, K2, permutations=20, seed=3)
    b = permutation_null(K1, K2, permutations=20, seed=3)
    c = permutation_null(K1, K2, permutations=20, seed=4)
    assert a == b
    assert a.mean != c.mean
    d = a.to_dict()
    assert set(d) == {"observed", "mean", "std", "p95", "z", "p_value", "permutations", "excess", "within"}
    assert d["within"] == "all" and d["excess"] == pytest.approx((a.observed - a.mean) / (1 - a.mean))
    json.dumps(d, allow_nan=False)
    constant = NullResult(1.0, 1.0, 0.0, 1.0, math.nan, 1.0, 5)
    assert constant.to_dict()["z"] is None


def test_null_rejects_an_unknown_statistic():
    K = _gram(5, 2, seed=0)
    with pytest.raises(ValueError, match="statistic"):
        permutation_null(K, K, statistic="cka")  # type: ignore[arg-type]
