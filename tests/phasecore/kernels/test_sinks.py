"""The sketch sink: the TensorSketch of factored layers is the CountSketch of their gradient under the
product hash, and sketched inner products are unbiased."""

from __future__ import annotations

import torch

from phasecore.kernels.grad_rules import _SwappedFactored
from phasecore.kernels.reps import Dense, Factored
from phasecore.kernels.sinks import SketchSink

M, ROWS, A, B = 2, 3, 5, 6
SEG = torch.tensor([0, 0, 1, 1, 1, 2, 2])


def _factored(swapped: bool = False, seed: int = 0) -> Factored:
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(M, SEG.numel(), B, generator=gen, dtype=torch.float64)
    x = torch.randn(SEG.numel(), A, generator=gen, dtype=torch.float64)
    return _SwappedFactored(gy, SEG, x) if swapped else Factored(gy=gy, seg=SEG, x=x)


def _countsketch(g: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(*g.shape[:2], k, dtype=g.dtype)
    return out.index_add_(2, bucket, g * sign.to(g.dtype))


def test_factored_sketch_is_the_countsketch_of_the_dense_gradient() -> None:
    for swapped in (False, True):
        rep = _factored(swapped)
        sink = SketchSink(ROWS, M, sketch_dim=16, seed=3, cross_probe=True)
        sink.add("w", 0, ROWS, rep)
        dense = rep.densify(ROWS)  # (M, ROWS, A·B) in the parameter's own layout
        bucket, sign = sink._hash("w", A * B)  # the product hash, expanded in that layout
        expected = _countsketch(dense, bucket, sign, 16)
        assert torch.allclose(sink.sketch, expected, atol=1e-10), swapped


def test_a_group_keeps_one_hash_across_forms() -> None:
    """A group sketched in factored form and later given densely (or the reverse) uses one hash."""
    rep = _factored(seed=1)
    mixed = SketchSink(ROWS, M, sketch_dim=16, seed=0, cross_probe=False)
    mixed.add("w", 0, ROWS, rep)
    mixed.add("w", 0, ROWS, Dense(rep.densify(ROWS)))
    single = SketchSink(ROWS, M, sketch_dim=16, seed=0, cross_probe=False)
    single.add("w", 0, ROWS, rep)
    assert torch.allclose(mixed.sketch, 2 * single.sketch, atol=1e-10)


def test_factored_sketch_inner_products_are_unbiased() -> None:
    rep = _factored(seed=2)
    g = rep.densify(ROWS).reshape(M * ROWS, -1)
    exact = g @ g.T
    k, trials = 32, 400
    mean = torch.zeros_like(exact)
    for seed in range(trials):
        sink = SketchSink(ROWS, M, sketch_dim=k, seed=seed, cross_probe=True)
        sink.add("w", 0, ROWS, rep)
        mean += sink.finish().reshape(M * ROWS, M * ROWS) / trials
    # the standard error of each entry is about ‖g_i‖‖g_j‖ / sqrt(k · trials)
    norms = g.norm(dim=1)
    assert ((mean - exact).abs() / torch.outer(norms, norms)).max() < 4 / (k * trials) ** 0.5
