"""METRICS version 2 in the engine: distinct inputs and Gram validity (§0), the unbiased and within-class forms
of the cross alignment (§2), the step-size curve of S_NTK (§3) and λ_1/λ_k with its flags (§4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from phasecore.errors import EngineError
from phasecore.kernels import probe_gram
from phasecore.kernels.agop import agop_spectrum, spectrum_of_gram
from phasecore.kernels.distinct import distinct_inputs
from phasecore.kernels.stability import stability_probe
from phasecore.kernels.validity import check_gram
from phasecore.similarity.kernel_alignment import (
    kernel_alignment,
    permutation_null,
    unbiased_alignment,
    within_group_permutations,
)
from tests.helpers.models import brute_force_probe_gram


def _mlp(seed: int = 0, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 6)).double()


def test_distinct_inputs_collapse_identical_rows_of_tensors_and_mappings() -> None:
    x = torch.randn(4, 3)
    rows = x[[0, 1, 0, 2, 3, 1, 0]]
    d = distinct_inputs(rows)
    assert d.u == 4 and d.n == 7
    assert torch.equal(d.inputs[d.inverse], rows) and d.counts.tolist() == [3, 2, 1, 1]
    ids = torch.tensor([[1, 2, 0], [1, 2, 0], [1, 2, 3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])  # same ids, another mask: another input
    text = distinct_inputs({"input_ids": ids[[0, 0, 2, 1]], "attention_mask": mask[[0, 0, 2, 1]]})
    assert text.u == 3 and text.inverse.tolist() == [0, 0, 1, 2]


def test_the_kernel_over_distinct_inputs_equals_the_kernel_over_all_samples() -> None:
    model = _mlp()
    x = torch.randn(5, 8, dtype=torch.float64)[[0, 1, 2, 0, 3, 4, 1, 0]]
    full = probe_gram(model, x, probes=3, cross_probe=True)
    d = distinct_inputs(x)
    part = probe_gram(model, d.inputs, probes=3, cross_probe=True)
    np.testing.assert_allclose(d.expand_gram(part.ntk()), full.ntk(), rtol=1e-12)
    # the AGOP: D^{1/2} G_U D^{1/2} with D = n_u/N has the non-zero spectrum of the (N M) Gram / N
    lam_full = np.sort(np.linalg.eigvalsh(full.agop_gram()))[::-1]
    lam_u = np.sort(np.linalg.eigvalsh(part.agop_gram(d.counts / d.n)))[::-1]
    np.testing.assert_allclose(lam_u, lam_full[: lam_u.size], rtol=1e-9, atol=1e-14 * lam_full[0])
    assert np.all(lam_full[lam_u.size :] < 1e-12 * lam_full[0])  # the duplicates only add zeros


def test_agop_spectrum_weights_duplicates_by_their_multiplicity() -> None:
    model = _mlp(1)
    x = torch.randn(6, 8, dtype=torch.float64)[[0, 0, 0, 1, 2, 3, 4, 5, 5]]
    spec = agop_spectrum(model, x, probes="exact", k=2)
    g = brute_force_probe_gram(model, x, torch.eye(6, dtype=torch.float64))  # (d, N, d, N), every sample
    expected = np.sort(np.linalg.eigvalsh(g.reshape(54, 54).numpy() / (9 * 6)))[::-1]
    np.testing.assert_allclose(spec.eigenvalues, expected[: spec.eigenvalues.size], rtol=1e-9, atol=1e-13)
    assert spec.rows == 6 * 6  # U·M with U = 6 distinct inputs


def test_check_gram_refuses_asymmetric_and_indefinite_grams() -> None:
    X = np.random.default_rng(0).normal(size=(12, 4))
    good = X @ X.T
    lam = check_gram(good, "test")
    assert np.allclose(lam, np.linalg.eigvalsh(good))
    skewed = good.copy()
    skewed[0, 1] += 1e-3 * np.linalg.norm(good)
    with pytest.raises(EngineError, match="not symmetric"):
        check_gram(skewed, "test")
    indefinite = good - 0.1 * np.linalg.eigvalsh(good)[-1] * np.eye(12)
    with pytest.raises(EngineError, match="not positive semi-definite"):
        check_gram(indefinite, "test")


def test_the_version_1_mirror_bug_is_an_engine_error_not_a_clipped_spectrum() -> None:
    """The probe-swapped mirror of engine 0.2.0 gave an asymmetric cross-probe Gram; now it fails loudly."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=(3, 10, 50))  # (M, N, P)
    gram = np.einsum("mip,njp->minj", g, g)
    half_a, half_b = slice(0, 5), slice(5, 10)
    broken = gram.copy()
    block = np.einsum("mip,njp->minj", g[:, half_a], g[:, half_b])
    broken[:, half_b, :, half_a] = block.transpose(0, 3, 2, 1)  # transpose(1, 3): swaps the probes
    spectrum_of_gram(gram.reshape(30, 30), 3, k=2)
    with pytest.raises(EngineError):
        spectrum_of_gram(broken.reshape(30, 30), 3, k=2)


def test_agop_ratio_is_stable_in_n() -> None:
    model = _mlp(2, width=24)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(512, 8, generator=gen, dtype=torch.float64)
    small = agop_spectrum(model, x[:64], probes=4, k=8)
    large = agop_spectrum(model, x, probes=4, k=8)
    assert small.ratio is not None and large.ratio is not None
    assert abs(small.log10_ratio - large.log10_ratio) < 0.3
    assert not small.unstable and not large.unstable


def test_a_ratio_driven_by_one_probe_is_flagged_unstable() -> None:
    rng = np.random.default_rng(5)
    m, u = 4, 40
    # probes 0-1 carry a flat spectrum, probes 2-3 a steep one: the half-probe sub-block disagrees with the whole
    flat = rng.normal(size=(2, u, 200))
    steep = rng.normal(size=(2, u, 200)) * (np.arange(1, 201) ** -1.5) * 30
    g = np.concatenate([flat, steep]).reshape(m * u, 200)
    spec = spectrum_of_gram(g @ g.T, m, k=8)
    assert spec.ratio is not None and spec.unstable
    assert spec.ratio_half_probes is not None and spec.ratio_half_inputs is not None


def test_unbiased_alignment_compares_across_n_where_the_biased_centered_one_does_not() -> None:
    rng = np.random.default_rng(0)
    biased, unbiased = [], []
    for n in (64, 576):
        X, Y = rng.normal(size=(n, 32)), rng.normal(size=(n, 32))  # unrelated kernels
        biased.append(kernel_alignment(X @ X.T, Y @ Y.T, centered=True))
        unbiased.append(unbiased_alignment(X @ X.T, Y @ Y.T))
    assert biased[0] > 2.5 * biased[1]  # the biased value's floor falls like 1/N
    assert all(abs(v) < 0.05 for v in unbiased)
    Z = rng.normal(size=(100, 8))
    assert unbiased_alignment(Z @ Z.T, Z @ Z.T) == pytest.approx(1.0)


def test_the_within_class_null_keeps_labels_and_sees_past_shared_class_structure() -> None:
    labels = np.repeat(np.arange(6), 12)
    for perm in within_group_permutations(labels, 5, seed=0):
        assert np.array_equal(labels[perm], labels)
    rng = np.random.default_rng(1)
    means = rng.normal(size=(6, 16))
    X = means[labels] + 0.3 * rng.normal(size=(72, 16))  # two models that share only the class structure
    Y = means[labels] @ rng.normal(size=(16, 16)) + 0.3 * rng.normal(size=(72, 16))
    plain = permutation_null(X @ X.T, Y @ Y.T, statistic="centered", permutations=100)
    within = permutation_null(X @ X.T, Y @ Y.T, statistic="centered", permutations=100, groups=labels)
    assert plain.p_value < 0.02 and within.within == "class"
    assert within.p_value > 0.05  # within classes, nothing is shared


def test_stability_probe_records_its_protocol_and_the_step_size_curve() -> None:
    model = _mlp(4)
    x = torch.randn(12, 8, dtype=torch.float64)[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1]]
    result = stability_probe(model, x, probes=2, steps=4, subset=14, seed=0, lr_scales=(4.0, 2.0))
    assert [p.lr_scale for p in result.curve] == [1.0, 2.0, 4.0]
    assert (result.steps, result.subset, result.lr_scale, result.n_distinct) == (4, 14, 1.0, 12)
    main = result.curve[0]
    assert main.s_ntk == result.s_ntk and main.eta == result.eta
    assert result.curve[1].eta == pytest.approx(2 * result.eta)
    assert result.curve[2].s_ntk <= result.s_ntk + 1e-9  # a larger step moves the kernel at least as far
