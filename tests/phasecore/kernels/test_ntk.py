"""The kernel engine against a brute-force reference, on every architecture family of the paper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from phasecore.kernels import ntk_gram, probe_gram
from tests.helpers.models import (
    brute_force_probe_gram,
    image_batch,
    language_models,
    text_batch,
    vision_models,
)

VISION = vision_models()
LANGUAGE = language_models()


def _rel_err(got: np.ndarray, ref: torch.Tensor) -> float:
    return float((torch.from_numpy(got) - ref).abs().max() / ref.abs().max())


def _check(model: nn.Module, inputs, *, chunk_size: int = 2) -> dict:
    model = model.double().eval()
    inputs = {k: v for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.double()
    with torch.no_grad():
        d = (model(**inputs) if isinstance(inputs, dict) else model(inputs)).shape[1]
    probes = torch.randn(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = probe_gram(model, inputs, probes=probes, cross_probe=True, chunk_size=chunk_size)
    ref = brute_force_probe_gram(model, inputs, probes)
    assert _rel_err(result.gram, ref) < 1e-8, result.info
    return result.info


@pytest.mark.parametrize("name", sorted(VISION))
def test_exact_gram_matches_brute_force_vision(name: str) -> None:
    info = _check(VISION[name], image_batch())
    # Swin's window attention folds the windows of all samples into one batch dimension, so its bias
    # table has no batch-first rule and goes through the exact per-sample loop; every other layer has a rule
    looped = {p.rsplit(".", 1)[-1] for p in info["per_sample_loop_params"]}
    assert looped <= ({"relative_position_bias_table"} if name == "swin" else set()), info


CONVS = {
    "3x3": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "stride2-even-input": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "depthwise-5x5-stride2": dict(in_channels=6, out_channels=6, kernel_size=5, stride=2, padding=2, groups=6),
    "grouped-multiplier": dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, bias=False),
    "dilated-rect": dict(in_channels=3, out_channels=5, kernel_size=(3, 2), dilation=(2, 1), padding=(2, 1)),
    "patchify": dict(in_channels=3, out_channels=4, kernel_size=4, stride=4),
    "pointwise": dict(in_channels=5, out_channels=7, kernel_size=1),
    "valid": dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_rule_matches_brute_force(name: str) -> None:
    """Every conv geometry takes the per-offset rule (no per-sample loop) and reproduces the reference."""
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONVS[name])
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten())
    channels = CONVS[name]["in_channels"]
    x = torch.randn(3, channels, 9, 8)
    info = _check(model, x)
    assert info["per_sample_loop_params"] == [] and info["rules"] == {"conv2d_rule": 1}


def test_conv_rule_handles_timm_conv2d_same() -> None:
    """timm's Conv2dSame pads asymmetrically in its own forward (TF "SAME"); odd and even inputs."""
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.Flatten())
    for size in (8, 9):
        info = _check(model, torch.randn(3, 3, size, size))
        assert info["per_sample_loop_params"] == [] and info["rules"] == {"conv2d_rule": 1}


class _ReLUFunction(torch.autograd.Function):
    """An activation torch.func cannot transform (no setup_context / vmap rule), as some custom layers are."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0).to(g.dtype)


class _CustomReLU(nn.Module):
    def forward(self, x):
        return _ReLUFunction.apply(x)


def test_norm_rule_handles_an_activation_torch_func_cannot_transform() -> None:
    """timm's BatchNormAct2d with such an activation keeps its closed-form rule (per-probe autograd inside)."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    norm = BatchNormAct2d(4, act_layer=_CustomReLU)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.Flatten()).double().eval()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    probes = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = probe_gram(model, x, probes=probes, cross_probe=True, chunk_size=2)
    assert result.info["per_sample_loop_params"] == [] and result.info["rules"]["norm_rule"] == 1
    params = list(model.parameters())
    rows = []
    for u in probes:  # reference: plain autograd, one sample at a time
        for i in range(3):
            grads = torch.autograd.grad((model(x[i : i + 1])[0] * u).sum(), params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    g = torch.stack(rows)
    assert _rel_err(result.gram, (g @ g.T).reshape(2, 3, 2, 3)) < 1e-8


@pytest.mark.parametrize("name", sorted(LANGUAGE))
def test_exact_gram_matches_brute_force_language(name: str) -> None:
    _check(LANGUAGE[name], text_batch())


def test_fast_rules_cover_standard_layers() -> None:
    """BERT needs no per-sample loop: every layer has a rule that passes the first-chunk check."""
    info = _check(LANGUAGE["bert"], text_batch())
    assert info["per_sample_loop_params"] == []
    assert info["rules"]["linear_rule"] > 0 and info["rules"]["embedding_rule"] == 3


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.norm(self.a(x))))


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyMLP().double(), torch.randn(9, 5, dtype=torch.float64)


def test_exact_probes_equal_trace_ntk() -> None:
    """probes='exact' gives Θ_ij = (1/d) Σ_c ⟨∂f_c(x_i), ∂f_c(x_j)⟩ from the full Jacobian."""
    model, x = _mlp()
    theta = ntk_gram(model, x, probes="exact", chunk_size=4)
    ref = brute_force_probe_gram(model, x, torch.eye(3, dtype=torch.float64))
    expected = sum(ref[c, :, c, :] for c in range(3)) / 3
    assert np.allclose(theta, expected.numpy(), rtol=1e-10, atol=0)
    assert theta.shape == (9, 9) and theta.dtype == np.float64


def test_gaussian_probes_are_unbiased_and_seeded() -> None:
    model, x = _mlp()
    exact = ntk_gram(model, x, probes="exact")
    many = ntk_gram(model, x, probes=400, seed=3)
    assert np.abs(many - exact).max() / np.abs(exact).max() < 0.15
    assert np.array_equal(ntk_gram(model, x, probes=4, seed=7), ntk_gram(model, x, probes=4, seed=7))
    assert not np.array_equal(ntk_gram(model, x, probes=4, seed=7), ntk_gram(model, x, probes=4, seed=8))


def test_chunking_does_not_change_the_gram() -> None:
    model, x = _mlp()
    a = ntk_gram(model, x, probes=2, chunk_size=2)
    b = ntk_gram(model, x, probes=2, chunk_size=9)
    assert np.allclose(a, b, rtol=1e-12)


def test_sketch_approximates_exact_gram() -> None:
    model = LANGUAGE["bert"].float().eval()
    inputs = text_batch(n=6)
    exact = probe_gram(model, inputs, probes=2, seed=0)
    sketch = probe_gram(model, inputs, probes=2, seed=0, method="sketch", sketch_dim=8192)
    err = np.linalg.norm(sketch.gram - exact.gram) / np.linalg.norm(exact.gram)
    assert err < 0.1
    assert sketch.method == "sketch" and sketch.sketch_dim == 8192


def test_auto_method_falls_back_to_sketch_over_budget() -> None:
    model, x = _mlp()
    result = probe_gram(model, x, probes=2, method="auto", memory_budget_gb=1e-9)
    assert result.method == "sketch"
    assert probe_gram(model, x, probes=2, method="auto").method == "exact"


def test_exact_over_budget_is_a_clear_error() -> None:
    from phasecore.errors import InvalidSettings

    model, x = _mlp()
    with pytest.raises(InvalidSettings, match="method='sketch'"):
        probe_gram(model, x, probes=2, method="exact", memory_budget_gb=1e-9)


def test_model_is_restored_after_the_engine() -> None:
    model, x = _mlp()
    model.train()
    model.a.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ntk_gram(model, x, probes=1)
    assert model.training and not model.a.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_params_restrict_theta() -> None:
    model, x = _mlp()
    only_b = probe_gram(model, x, probes="exact", params=["b.weight", "b.bias"])
    assert only_b.n_params == 7 * 3 + 3
    full = probe_gram(model, x, probes="exact")
    assert full.n_params == sum(p.numel() for p in model.parameters())
    assert not np.allclose(only_b.ntk(), full.ntk())


def test_gradient_strategies_agree_and_auto_picks_by_representation() -> None:
    """After the checked first chunk, ``auto`` hands a conv net on the CPU (every rep materialised) to the
    per-sample loop and keeps a text model (embedding tables, ghost layers) on the rules; both strategies
    give the same Gram."""
    conv = VISION["efficientnet"].double().eval()
    images = image_batch(n=5).double()
    by = {
        g: probe_gram(conv, images, probes=2, chunk_size=2, cross_probe=True, gradients=g) for g in ("rules", "loop")
    }
    auto = probe_gram(conv, images, probes=2, chunk_size=2, cross_probe=True)
    assert auto.info["gradients"] == "loop" and by["rules"].info["gradients"] == "rules"
    assert np.allclose(by["loop"].gram, by["rules"].gram, rtol=1e-10, atol=0)
    assert np.allclose(auto.outputs, by["rules"].outputs, rtol=1e-12)

    bert = LANGUAGE["bert"].double().eval()
    text = text_batch(n=5)
    auto_text = probe_gram(bert, text, probes=2, chunk_size=2)
    loop_text = probe_gram(bert, text, probes=2, chunk_size=2, gradients="loop")
    assert auto_text.info["gradients"] == "rules" and loop_text.info["gradients"] == "loop"
    assert np.allclose(loop_text.gram, auto_text.gram, rtol=1e-10, atol=1e-14)
    one_chunk = probe_gram(conv, images, probes=2, chunk_size=8)
    assert one_chunk.info["gradients"] == "rules"  # nothing left to hand over after the first chunk
