"""AGOP spectrum (METRICS §4) and the stability probe (METRICS §3)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from phasecore.agop import agop_spectrum, spectrum_stats
from phasecore.stability import phase_of, stability_probe
from tests.engine.models import brute_force_probe_gram


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, torch.randn(7, 4, dtype=torch.float64)


def test_agop_spectrum_equals_explicit_parameter_space_agop() -> None:
    """Non-zero eigenvalues of (1/(N d)) Σ_i J_iᵀ J_i, formed explicitly (P × P) on a tiny model."""
    model, x = _model()
    spec = agop_spectrum(model, x, probes="exact")
    g = brute_force_probe_gram(model, x, torch.eye(3, dtype=torch.float64))  # (d, N, d, N)
    gram = g.reshape(21, 21).numpy() / (7 * 3)
    expected = np.sort(np.linalg.eigvalsh(gram))[::-1]
    assert np.allclose(spec.eigenvalues, expected, rtol=1e-9, atol=1e-12)
    nz = expected[expected > 1e-10 * expected[0]]
    assert np.isclose(spec.ratio, nz[0] / nz[-1])


def test_spectrum_stats_on_a_known_power_law() -> None:
    lam = np.arange(1, 101, dtype=float) ** -2.0
    stats = spectrum_stats(np.concatenate([lam, np.zeros(5)]))
    assert stats.n_nonzero == 100
    assert np.isclose(stats.decay, 2.0)
    assert np.isclose(stats.ratio, 1e4)
    assert 1 <= stats.participation_ratio <= stats.effective_rank <= 100


def test_input_space_agop_of_a_linear_map_is_its_gram_spectrum() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(5, 3, bias=False).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    spec = agop_spectrum(lin, x, probes="exact", space="inputs")
    w = lin.weight.detach().numpy()
    expected = np.linalg.eigvalsh(w.T @ w / 3)[::-1][:3]  # AGOP = (1/d) Wᵀ W for every sample
    assert np.allclose(spec.eigenvalues[:3], expected, rtol=1e-9)


def test_stability_probe_is_seeded_and_leaves_the_model_alone() -> None:
    model, x = _model()
    before = [p.detach().clone() for p in model.parameters()]
    a = stability_probe(model, x, probes=2, steps=5, subset=5, seed=3)
    b = stability_probe(model, x, probes=2, steps=5, subset=5, seed=3)
    assert a.s_ntk == b.s_ntk and 0 < a.s_ntk <= 1
    assert a.loss_end < a.loss_start  # η = 1/λ_max is a stable step
    assert a.phase == phase_of(a.s_ntk)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_phase_bands() -> None:
    assert [phase_of(s) for s in (0.2, 0.5, 0.89, 0.9, 1.0)] == [
        "chaotic",
        "optimal",
        "optimal",
        "lazy",
        "lazy",
    ]
    assert phase_of(float("nan")) == "undetermined"


def test_a_rank_deficient_spectrum_is_flagged_at_the_cut() -> None:
    """Repeated inputs leave a round-off tail: the kept λ_min sits at the cut, and the result says so."""
    signal = np.logspace(0, -6, 40)
    tail = np.full(20, 3e-10)  # round-off just above rtol · λ_max = 1e-10
    flagged = spectrum_stats(np.concatenate([signal, tail, np.zeros(10)]), rtol=1e-10)
    assert flagged.at_cut and flagged.n_nonzero == 60 and 1e9 < flagged.ratio < 1e10
    clean = spectrum_stats(np.concatenate([signal, np.zeros(10)]), rtol=1e-10)
    assert not clean.at_cut and np.isclose(clean.ratio, 1e6)
