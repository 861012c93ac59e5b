"""AGOP spectrum (METRICS §4) and the stability probe (METRICS §3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from phasecore.kernels.agop import agop_spectrum, spectrum_stats
from phasecore.kernels.stability import phase_of, stability_probe
from tests.helpers.models import brute_force_probe_gram


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, torch.randn(7, 4, dtype=torch.float64)


def test_agop_spectrum_equals_explicit_parameter_space_agop() -> None:
    """Non-zero eigenvalues of (1/(N d)) Σ_i J_iᵀ J_i, formed explicitly (P × P) on a tiny model."""
    model, x = _model()
    spec = agop_spectrum(model, x, probes="exact", k=2)
    g = brute_force_probe_gram(model, x, torch.eye(3, dtype=torch.float64))  # (d, N, d, N)
    gram = g.reshape(21, 21).numpy() / (7 * 3)
    expected = np.sort(np.linalg.eigvalsh(gram))[::-1]
    assert np.allclose(spec.eigenvalues, expected, rtol=1e-9, atol=1e-12)
    assert np.isclose(spec.ratio, expected[0] / expected[1]) and not spec.censored  # λ_1/λ_k, k = 2
    nz = expected[expected > 1e-6 * expected[0]]
    assert np.isclose(spec.condition, nz[0] / nz[-1])  # the paper's λ_max/λ_min, beside it


def test_spectrum_stats_on_a_known_power_law() -> None:
    lam = np.arange(1, 101, dtype=float) ** -2.0
    stats = spectrum_stats(np.concatenate([lam, np.zeros(5)]), k=8)
    assert stats.n_nonzero == 100
    assert np.isclose(stats.decay, 2.0)  # fitted over r = 1..k
    assert np.isclose(stats.ratio, 64.0) and np.isclose(stats.log10_ratio, np.log10(64.0))
    assert np.isclose(stats.condition, 1e4)
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


def test_a_round_off_tail_moves_the_condition_number_but_not_the_agop_ratio() -> None:
    """Repeated inputs and float32 leave a round-off tail near the cut: λ_max/λ_min then measures the cut (the
    version-1 artefact of 1e9–1e10), λ_1/λ_k does not move, and the condition number is flagged at_cut."""
    signal = np.logspace(0, -3, 40)
    tail = np.full(20, 3e-10)
    flagged = spectrum_stats(np.concatenate([signal, tail, np.zeros(10)]), k=4, rtol=1e-10)
    clean = spectrum_stats(np.concatenate([signal, np.zeros(30)]), k=4, rtol=1e-10)
    assert flagged.at_cut and 1e9 < flagged.condition < 1e10  # what version 1 reported as the AGOP ratio
    assert not clean.at_cut and np.isclose(clean.condition, 1e3)
    assert flagged.ratio == clean.ratio == signal[0] / signal[3]
    assert not flagged.censored


def test_an_agop_ratio_below_the_float32_floor_is_censored() -> None:
    lam = np.concatenate([[1.0, 0.5], np.full(30, 1e-7)])  # λ_4 < 1e-5 λ_1
    stats = spectrum_stats(lam, k=4)
    assert stats.censored and stats.ratio == pytest.approx(1e5) and stats.log10_ratio == pytest.approx(5.0)


def test_an_agop_ratio_needs_eight_k_distinct_rows() -> None:
    stats = spectrum_stats(np.linspace(1.0, 0.1, 100), k=16)
    assert stats.ratio is None and stats.log10_ratio is None
    assert "U·M ≥ 8k = 128" in stats.reason and "100" in stats.reason
    assert spectrum_stats(np.linspace(1.0, 0.1, 100), k=12).ratio is not None  # 96 ≥ 8 · 12


@pytest.mark.parametrize("method", ["exact", "sketch"])
def test_the_probe_subsets_initial_gram_is_a_block_of_the_profiles_kernel(method: str) -> None:
    """The profile hands its own kernel (cross-probe, all N) to the probe; the subset's Θ̂(θ_0) taken from it is
    the one the probe would compute, so S_NTK is unchanged (float rounding aside), and nothing is recomputed."""
    from phasecore.kernels.engine import probe_gram

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    x = torch.randn(20, 3, 8, 8)
    x[7] = x[3]  # a repeated input: the kernel is over distinct inputs, expanded
    kw = dict(probes=2, method=method, sketch_dim=256, seed=4)
    kernel = probe_gram(model, x, cross_probe=True, **kw).ntk()
    own = stability_probe(model, x, steps=3, subset=9, **kw)
    reused = stability_probe(model, x, steps=3, subset=9, kernel=kernel, **kw)
    assert reused.gram0_reused and not own.gram0_reused and reused.timings["gram_0"] < 0.01
    assert set(own.timings) == {"gram_0", "k_0", "steps", "gram_T"}
    assert reused.s_ntk == pytest.approx(own.s_ntk, abs=1e-6)
    assert reused.s_ntk_centered == pytest.approx(own.s_ntk_centered, abs=1e-5)
    assert reused.lambda_max == own.lambda_max and reused.loss_end == own.loss_end
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        stability_probe(model, x, steps=1, subset=9, kernel=kernel[:5, :5], **kw)


def test_the_probe_trains_on_distinct_inputs_with_the_full_batch_loss() -> None:
    """Repeated inputs train once, weighted by their count: loss_start, loss_end and η are those of plain full-batch
    gradient descent over every row (float64, so the two agree to rounding)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)[torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])]  # 8 rows, 5 distinct
    result = stability_probe(model, x, probes=2, steps=4, subset=8, seed=1)
    gen = torch.Generator().manual_seed(2)
    u0 = torch.randn(3, generator=gen, dtype=torch.float64)
    u0 = u0 / u0.norm()
    targets = torch.randn(8, generator=gen, dtype=torch.float64)
    work = copy.deepcopy(model)
    losses = []
    for step in range(5):
        loss = ((work(x) @ u0 - targets) ** 2).sum() / 16
        losses.append(float(loss.detach()))
        if step < 4:
            grads = torch.autograd.grad(loss, list(work.parameters()))
            with torch.no_grad():
                for p, g in zip(work.parameters(), grads, strict=True):
                    p.sub_(result.eta * g)
    assert result.n_distinct == 5
    assert result.loss_start == pytest.approx(losses[0], rel=1e-12)
    assert result.loss_end == pytest.approx(losses[-1], rel=1e-10)


def test_the_probe_runs_its_training_in_float64_on_request() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))  # float32, as loaded
    x = torch.randn(9, 4)
    single = stability_probe(model, x, probes=2, steps=3, subset=9, seed=2)
    double = stability_probe(model, x, probes=2, steps=3, subset=9, seed=2, precision="float64")
    assert double.precision == "float64" and single.precision == "float32"
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    assert double.s_ntk == pytest.approx(single.s_ntk, abs=1e-4)
    with pytest.raises(ValueError, match="precision"):
        stability_probe(model, x, probes=2, steps=1, subset=9, precision="float16")  # type: ignore[arg-type]
