"""Measured cross-modal alignment on planted data (METRICS §7)."""

import json

import numpy as np
import pytest
from scipy.stats import binom

from phasecore.errors import InvalidSettings
from phasecore.groundtruth.mapfit import FIGURES, measure_alignment
from phasecore.stats import poisson_binomial_sf

FIGURE_KEYS = {
    "status", "reason", "accuracy", "correct", "n", "chance", "p_value", "ci95",
    "n_effective", "p_value_clustered", "ci95_clustered",
}  # fmt: skip


def _l2(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=-1, keepdims=True)


def planted(*, classes=10, per_class=20, d_v=24, d_l=16, noise=0.5, seed=0):
    """Images = class centroid + noise; text = one fixed linear map M of the image (the planted alignment).

    Prototypes come from separate 'template' draws of each class pushed through the same M.
    """
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(classes, d_v))
    labels = np.repeat(np.arange(classes), per_class)
    E_v = centroids[labels] + noise * rng.normal(size=(labels.size, d_v))
    M = rng.normal(size=(d_v, d_l))
    E_l = E_v @ M
    templates = (centroids[:, None, :] + noise * rng.normal(size=(classes, 8, d_v))) @ M
    prototypes = _l2(templates).mean(axis=1)
    captions = [f"caption {i}" for i in range(labels.size)]
    return E_v, E_l, labels, prototypes, captions


@pytest.fixture(scope="module")
def aligned():
    E_v, E_l, labels, prototypes, captions = planted()
    return measure_alignment(E_v, E_l, labels, prototypes, captions=captions)


def test_a_planted_linear_map_is_found_on_unseen_classes(aligned):
    assert aligned["unseen_accuracy"] > 0.95
    assert aligned["seen_accuracy"] > 0.95
    assert aligned["retrieval_top1"] > 0.8
    assert aligned["alignment_score"] > 0.9
    # 10 classes: G = 5 pairs, every s_g above τ, so only the identity reaches D: p_above = 1/2^5 ≤ 0.05
    assert aligned["n_groups"] == aligned["unseen_folds"] == 5
    assert all(g["s_g"] > 0.8 for g in aligned["group_scores"])
    assert aligned["p_above"] == pytest.approx(1 / 32) and aligned["p_below"] == 1.0
    assert aligned["outcome"] == "aligned" and aligned["outcome_reason"] is None
    assert aligned["failed"] is False
    unseen = aligned["figures"]["unseen"]
    assert unseen["chance"] == pytest.approx(0.5)  # 10 classes: 5 held-out groups of 2 classes
    assert unseen["n"] == 200
    assert unseen["p_value"] < 1e-20
    assert unseen["p_value_clustered"] < 0.01
    assert unseen["ci95"][0] > 0.9


def test_result_shape_is_documented_and_json_safe(aligned):
    assert set(aligned) == {
        "method", "n", "n_classes", "folds", "unseen_folds", "seed", "failure_threshold",
        "n_distinct_captions", "seen_accuracy", "unseen_accuracy", "retrieval_top1", "retrieval_top5",
        "linear_probe_vision", "linear_probe_language", "chance", "figures", "alignment_score", "failed", "map",
        "outcome_alpha", "outcome", "outcome_reason", "group_scores", "n_groups", "p_above", "p_below", "sign_flip",
        "group_means",
    }  # fmt: skip
    assert aligned["group_means"] is None  # seeded groups name no kind of held-out value
    assert aligned["failure_threshold"] == 0.03 and aligned["outcome_alpha"] == 0.05
    assert aligned["sign_flip"] == "exact"
    groups = aligned["group_scores"]
    assert [g["classes"] for g in groups] == aligned["map"]["unseen_class_groups"]
    assert sorted(c for g in groups for c in g["classes"]) == list(range(10))
    for g in groups:
        assert set(g) == {"classes", "s_g", "b_g", "n"}
        assert g["n"] == 40 and g["s_g"] == pytest.approx(2 * g["b_g"] - 1)  # two classes of 20 pairs
    assert aligned["alignment_score"] == pytest.approx(np.mean([g["s_g"] for g in groups]))
    assert set(aligned["figures"]) == set(FIGURES) == set(aligned["chance"])
    for figure in aligned["figures"].values():
        assert set(figure) == FIGURE_KEYS
    assert aligned["chance"]["seen"] == pytest.approx(0.1)
    assert aligned["chance"]["retrieval_top1"] == pytest.approx(1 / 40)  # 200 pairs / 5 folds
    assert len(aligned["map"]["unseen_class_groups"]) == 5
    assert all(info["lambda"] > 0 for info in aligned["map"]["seen"])
    json.dumps(aligned, allow_nan=False)


def test_shuffled_pairs_fall_to_chance():
    E_v, E_l, labels, prototypes, captions = planted(noise=1.0, seed=1)
    shuffled = E_l[np.random.default_rng(2).permutation(len(E_l))]
    out = measure_alignment(E_v, shuffled, labels, prototypes, captions=captions)
    for figure in ("seen", "unseen", "retrieval_top1"):
        assert out["figures"][figure]["p_value_clustered"] > 0.05, figure
    assert abs(out["unseen_accuracy"] - 0.5) < 0.2
    assert out["retrieval_top1"] < 0.1
    assert out["alignment_score"] < 0.4
    assert out["outcome"] != "aligned"
    # the images still carry their labels: within-modal probes are unaffected by the pairing
    assert out["linear_probe_vision"] > 0.9


def test_a_classifier_passes_seen_classes_but_not_unseen_ones():
    """Text with class structure unrelated to the images: seen accuracy high, unseen at chance."""
    rng = np.random.default_rng(3)
    E_v, _, labels, _, captions = planted(seed=3)
    text_centroids = rng.normal(size=(10, 16))
    E_l = text_centroids[labels] + 0.3 * rng.normal(size=(labels.size, 16))
    prototypes = _l2(text_centroids)
    out = measure_alignment(E_v, E_l, labels, prototypes, captions=captions)
    assert out["seen_accuracy"] > 0.9
    assert out["figures"]["unseen"]["p_value_clustered"] > 0.05
    assert out["alignment_score"] < 0.5


@pytest.mark.parametrize("method", ["procrustes", "infonce"])
def test_other_maps_recover_the_planted_alignment(method):
    E_v, E_l, labels, prototypes, captions = planted(per_class=12, seed=4)
    out = measure_alignment(E_v, E_l, labels, prototypes, captions=captions, method=method)
    assert out["method"] == method
    assert out["unseen_accuracy"] > 0.85
    assert out["failed"] is False


def test_retrieval_is_not_applicable_when_captions_repeat():
    E_v, E_l, labels, prototypes, _ = planted(per_class=10)
    templated = [f"a photo of class {c}" for c in labels]
    repeated = "captions repeat (10 distinct of 100, fewer than half)"
    for captions, reason in ((templated, repeated), (None, "no captions")):
        out = measure_alignment(E_v, E_l, labels, prototypes, captions=captions)
        assert out["retrieval_top1"] is None and out["retrieval_top5"] is None
        assert out["figures"]["retrieval_top1"]["status"] == "n/a"
        assert reason in out["figures"]["retrieval_top1"]["reason"]
        assert out["chance"]["retrieval_top5"] is None
        assert out["unseen_accuracy"] > 0.9


def test_same_seed_same_numbers_and_another_seed_other_folds():
    E_v, E_l, labels, prototypes, captions = planted(per_class=10, noise=2.0, seed=5)
    a = measure_alignment(E_v, E_l, labels, prototypes, captions=captions, seed=1)
    b = measure_alignment(E_v, E_l, labels, prototypes, captions=captions, seed=1)
    c = measure_alignment(E_v, E_l, labels, prototypes, captions=captions, seed=2)
    assert a == b
    assert a["map"]["unseen_class_groups"] != c["map"]["unseen_class_groups"]


def test_odd_classes_give_one_group_of_three_and_the_poisson_binomial_tail():
    E_v, E_l, labels, prototypes, captions = planted(classes=9, per_class=10, seed=6)
    out = measure_alignment(E_v, E_l, labels, prototypes, captions=captions, folds=3)
    groups = out["map"]["unseen_class_groups"]
    assert sorted(len(g) for g in groups) == [2, 2, 2, 3]
    assert out["n_groups"] == out["unseen_folds"] == 4
    triple = next(g for g in out["group_scores"] if len(g["classes"]) == 3)
    assert triple["n"] == 30 and triple["s_g"] == pytest.approx((triple["b_g"] - 1 / 3) / (2 / 3))
    assert out["chance"]["unseen"] == pytest.approx((30 / 3 + 60 / 2) / 90)
    probs = np.array([0.25] * 40 + [1 / 3] * 60)
    k = 55
    dp = poisson_binomial_sf(k, probs)
    mc = np.random.default_rng(0).binomial(1, probs, size=(20000, 100)).sum(axis=1)
    assert dp == pytest.approx(np.mean(mc >= k), abs=0.01)
    assert poisson_binomial_sf(7, np.full(20, 0.3)) == pytest.approx(binom.sf(6, 20, 0.3), rel=1e-10)


def test_inputs_that_cannot_support_the_tests_are_refused():
    E_v, E_l, labels, prototypes, captions = planted(classes=3, per_class=10)
    with pytest.raises(InvalidSettings, match="≥ 4 classes"):
        measure_alignment(E_v, E_l, labels, prototypes)
    E_v, E_l, labels, prototypes, captions = planted(per_class=4)
    with pytest.raises(InvalidSettings, match="every class"):
        measure_alignment(E_v, E_l, labels, prototypes, folds=5)
    with pytest.raises(InvalidSettings, match="outcome_alpha"):
        measure_alignment(E_v, E_l, labels, prototypes, folds=2, outcome_alpha=0.5)
    with pytest.raises(InvalidSettings, match="method"):
        measure_alignment(E_v, E_l, labels, prototypes, method="cca")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text space"):
        measure_alignment(E_v, E_l, labels, prototypes[:, :3])
