"""METRICS v2 §7 "Outcome, three-way": class groups, s_g, the sign-flip test and aligned / failed / inconclusive."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from phasecore.errors import InvalidSettings
from phasecore.groundtruth.mapfit import measure_alignment
from phasecore.groundtruth.outcome_test import decide_outcome, min_groups_for, outcome_groups, sign_flip_test


def brute_force(scores, tau):
    """Reference sign-flip p-values by looping over every sign vector, in exact rational arithmetic."""
    d = [Fraction(s) - Fraction(tau) for s in scores]
    observed = sum(d) / len(d)
    stats = [
        sum(e * x for e, x in zip(signs, d, strict=True)) / len(d)
        for signs in itertools.product((1, -1), repeat=len(d))
    ]
    return (
        sum(stat >= observed for stat in stats) / len(stats),
        sum(stat <= observed for stat in stats) / len(stats),
    )


@pytest.mark.parametrize("G", [1, 2, 3, 5, 8, 11])
def test_sign_flip_matches_a_brute_force_reference(G):
    rng = np.random.default_rng(G)
    continuous = rng.uniform(-1, 1, size=G)
    # s_g of real groups are multiples of 1/20 (b_g over classes of 10 images): exact ties with D are common
    gridded = [Fraction(int(k), 20) for k in rng.integers(-20, 21, size=G)]
    for scores, tau in ((continuous, 0.03), (gridded, Fraction(1, 20)), (gridded, 0)):
        p_above, p_below = sign_flip_test(np.array([float(s) for s in scores]), float(tau))
        ref_above, ref_below = brute_force(scores, tau)
        assert p_above == pytest.approx(float(ref_above), abs=1e-12)
        assert p_below == pytest.approx(float(ref_below), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_p_values_lie_between_one_over_two_to_the_g_and_one(seed):
    rng = np.random.default_rng(seed)
    for G in range(1, 13):
        p_above, p_below = sign_flip_test(rng.normal(0.05, 0.3, size=G), 0.03)
        for p in (p_above, p_below):
            assert 1 / 2**G <= p <= 1
        assert p_above + p_below >= 1  # every sign vector lies on one side of D or on it


def test_symmetric_and_one_sided_cases():
    tau = 0.03
    d = np.array([0.4, -0.4, 0.1, -0.1, 0.25, -0.25])
    p_above, p_below = sign_flip_test(d + tau, tau)  # D = 0 and the flips are symmetric about it
    assert p_above == pytest.approx(p_below)
    assert p_above > 0.5
    above = np.array([0.9, 0.5, 0.7, 0.2, 0.6, 0.35])
    assert sign_flip_test(above, tau) == (1 / 64, 1.0)  # only the identity reaches D
    assert sign_flip_test(-above, tau) == (1.0, 1 / 64)
    assert sign_flip_test(np.full(6, tau), tau) == (1.0, 1.0)  # all ties: in favour of the null
    assert sign_flip_test(np.full(6, 0.1 + 0.2), 0.3) == (1.0, 1.0)  # a round-off tie is still a tie


def test_more_than_sixteen_groups_use_seeded_draws_plus_the_identity():
    rng = np.random.default_rng(7)
    scores = rng.normal(0.1, 0.4, size=18)
    p_above, p_below = sign_flip_test(scores, 0.03, seed=3)
    assert (p_above, p_below) == sign_flip_test(scores, 0.03, seed=3)
    assert sign_flip_test(scores, 0.03, seed=4) != (p_above, p_below)
    assert (p_above * 10_000) == pytest.approx(round(p_above * 10_000))  # counts over 9,999 draws + identity
    # exact p over all 2^18 sign vectors, vectorised here independently of the module
    signs = 1 - 2 * ((np.arange(2**18)[:, None] >> np.arange(18)) & 1)
    d = scores - 0.03
    stats = signs @ d / 18
    assert p_above == pytest.approx(np.mean(stats >= d.mean() - 1e-12), abs=0.015)
    assert p_below == pytest.approx(np.mean(stats <= d.mean() + 1e-12), abs=0.015)
    assert sign_flip_test(np.ones(20), 0.03) == (1 / 10_000, 1.0)
    assert decide_outcome(np.ones(20))["sign_flip"] == "monte-carlo (9999 draws + identity)"
    assert decide_outcome(np.ones(16))["sign_flip"] == "exact"


def test_outcome_of_is_three_way():
    high, low = np.full(5, 0.8), np.full(5, -0.5)
    aligned = decide_outcome(high, 0.03, 0.05)
    assert aligned["outcome"] == "aligned" and aligned["failed"] is False and aligned["outcome_reason"] is None
    assert aligned["p_above"] == 1 / 32 and aligned["p_below"] == 1.0
    assert aligned["n_groups"] == 5 and aligned["alignment_score"] == pytest.approx(0.8)
    assert aligned["failure_threshold"] == 0.03 and aligned["outcome_alpha"] == 0.05
    failed = decide_outcome(low, 0.03, 0.05)
    assert failed["outcome"] == "failed" and failed["failed"] is True and failed["p_below"] == 1 / 32
    mixed = decide_outcome(np.array([0.8, -0.5, 0.3, -0.2, 0.1, 0.0]), 0.03, 0.05)
    assert mixed["outcome"] == "inconclusive" and mixed["failed"] is None
    assert mixed["outcome_reason"].startswith("neither p-value ≤ α")
    # τ moves the verdict: the same scores are "failed" against a threshold above them
    assert decide_outcome(np.full(8, 0.2), 0.5, 0.05)["outcome"] == "failed"


def test_too_few_groups_are_inconclusive_whatever_the_scores():
    assert min_groups_for(0.05) == 5 and min_groups_for(1 / 16) == 4 and min_groups_for(0.01) == 7
    for scores in (np.ones(4), -np.ones(4), np.ones(2)):
        out = decide_outcome(scores, 0.03, 0.05)
        assert out["outcome"] == "inconclusive" and out["failed"] is None
        assert out["outcome_reason"] == f"too few classes (G = {scores.size} < 5 groups)"
    assert decide_outcome(np.ones(4), 0.03, 0.05)["p_above"] == 1 / 16  # still reported
    assert decide_outcome(np.ones(4), 0.03, 0.1)["outcome"] == "aligned"  # 1/16 ≤ 0.1 is reachable
    for alpha in (0.0, 0.5, 1.2):
        with pytest.raises(InvalidSettings, match="outcome_alpha"):
            decide_outcome(np.ones(6), 0.03, alpha)


def test_groups_are_pairs_with_one_triple_when_the_class_count_is_odd():
    for C in (4, 7, 10, 41):
        groups = outcome_groups(np.arange(C), np.random.default_rng(C))
        assert len(groups) == C // 2
        sizes = sorted(g.size for g in groups)
        assert sizes == [2] * (C // 2) if C % 2 == 0 else sizes == [2] * (C // 2 - 1) + [3]
        assert sorted(np.concatenate(groups).tolist()) == list(range(C))
    a = outcome_groups(np.arange(10), np.random.default_rng(1))
    b = outcome_groups(np.arange(10), np.random.default_rng(2))
    assert [g.tolist() for g in a] != [g.tolist() for g in b]


# --- planted data ---------------------------------------------------------------------------------------


def _l2(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=-1, keepdims=True)


def planted(*, classes=40, per_class=10, d_v=32, d_l=24, spread=0.6, noise=0.05, seed=0):
    """Class-clustered gaussian images; text = a fixed random linear map of the image plus small noise.

    Prototypes: the mean normalised text embedding of each class (from the correctly paired text).
    """
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(classes, d_v))
    labels = np.repeat(np.arange(classes), per_class)
    E_v = centroids[labels] + spread * rng.normal(size=(labels.size, d_v))
    M = rng.normal(size=(d_v, d_l)) / np.sqrt(d_v)
    E_l = E_v @ M + noise * rng.normal(size=(labels.size, d_l))
    prototypes = np.stack([_l2(E_l[labels == c]).mean(axis=0) for c in range(classes)])
    return E_v, E_l, labels, prototypes


def test_planted_alignment_over_forty_classes_is_aligned():
    E_v, E_l, labels, prototypes = planted()
    out = measure_alignment(E_v, E_l, labels, prototypes)
    assert out["n_groups"] == out["unseen_folds"] == 20
    assert out["sign_flip"] == "monte-carlo (9999 draws + identity)"
    assert out["alignment_score"] > 0.9
    assert out["outcome"] == "aligned" and out["failed"] is False and out["outcome_reason"] is None
    assert out["p_above"] <= 0.05 and out["p_above"] == pytest.approx(1 / 10_000)
    assert out["p_below"] == 1.0


def test_shuffled_pairs_are_rarely_aligned():
    """Pairing destroyed: failed or inconclusive, with "aligned" no more often than a false positive at α.

    "Never aligned" cannot be asserted of a level-α test: over 200 such draws (seeds 100–299 / 0–199) this
    came out 80% inconclusive, 12% failed and 8% aligned. Likely cause: the G maps of one draw share most of
    their training classes, so the s_g need not be independent as the sign-flip test assumes (over 60 draws
    the spread of alignment_score was 0.129 against 0.117 implied by the flips). Seeds 0–9 give one false
    "aligned"; with p_above and p_below swapped they give two, and "aligned" on the point estimate
    (alignment_score ≥ τ) gives seven.
    """
    outcomes = []
    for seed in range(10):
        E_v, E_l, labels, prototypes = planted(seed=100 + seed)
        shuffled = E_l[np.random.default_rng(seed).permutation(len(E_l))]
        out = measure_alignment(E_v, shuffled, labels, prototypes, seed=seed)
        assert abs(out["alignment_score"]) < 0.4
        outcomes.append(out["outcome"])
    assert outcomes.count("aligned") <= 1, outcomes
    assert outcomes.count("inconclusive") >= 6, outcomes


def test_eight_classes_are_too_few_even_when_perfectly_aligned():
    E_v, E_l, labels, prototypes = planted(classes=8)
    out = measure_alignment(E_v, E_l, labels, prototypes)
    assert out["alignment_score"] > 0.9 and out["p_above"] == 1 / 16
    assert out["n_groups"] == 4
    assert out["outcome"] == "inconclusive" and out["failed"] is None
    assert "too few classes" in out["outcome_reason"]


def test_odd_class_count_gives_one_group_of_three():
    E_v, E_l, labels, prototypes = planted(classes=11)
    out = measure_alignment(E_v, E_l, labels, prototypes)
    sizes = sorted(len(g["classes"]) for g in out["group_scores"])
    assert sizes == [2, 2, 2, 2, 3] and out["n_groups"] == 5
    assert sum(g["n"] for g in out["group_scores"]) == out["n"]
    assert out["outcome"] == "aligned"  # G = 5: 1/32 ≤ 0.05 when every s_g is above τ
