"""Cross-probe Grams of factored (ghost) layers when a layer sees more positions than one block.

``factored_gram`` forms the Gram by blocks of positions and adds each off-diagonal block twice, once
mirrored. The mirror of ``blk[m, i, m', j]`` is ``K[m', j, m, i]``; a mirror that swaps only the samples
(``transpose(1, 3)``) puts probe m's products under probe m'. It shows only when a layer has more
positions than one block, so these tests use a small block and compare with brute force, for every
factored form (linear over tokens, embedding table, transformers' Conv1D layout).
"""

from __future__ import annotations

import pytest
import torch

from phasecore.ntk.reps import Factored, factored_gram
from phasecore.ntk.rules import _SwappedFactored

M, N, TOK, A, B, TABLE = 3, 6, 40, 4, 5, 9
KINDS = ("linear", "table", "conv1d")


def _rep(kind: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> Factored:
    """M probes, N samples and TOK positions in no particular order (the calls of a shared layer and the
    chunks of the sink are concatenated), the last sample without any position."""
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(M, TOK, B, generator=gen, dtype=torch.float64).to(dtype)
    seg = (torch.arange(TOK) % (N - 1))[torch.randperm(TOK, generator=gen)]
    if kind == "table":  # few rows: positions share rows within and across samples
        return Factored(gy=gy, seg=seg, ids=torch.randint(0, TABLE, (TOK,), generator=gen), table_rows=TABLE)
    x = torch.randn(TOK, A, generator=gen, dtype=torch.float64).to(dtype)
    return _SwappedFactored(gy, seg, x) if kind == "conv1d" else Factored(gy=gy, seg=seg, x=x)


def _brute_force(rep: Factored) -> torch.Tensor:
    """G[m,i,m',j] = ⟨g_i^m, g_j^m'⟩ from the materialised gradients (M, N, P), formed in float64."""
    x = None if rep.x is None else rep.x.to(torch.float64)
    rep = type(rep)(rep.gy.to(torch.float64), rep.seg, x, rep.ids, rep.table_rows)
    flat = rep.densify(N).reshape(M * N, -1)
    return (flat @ flat.T).reshape(M, N, M, N)


def _asymmetry(gram: torch.Tensor) -> float:
    side = int(gram.numel() ** 0.5)
    flat = gram.reshape(side, side)
    return float((flat - flat.T).abs().max() / flat.abs().max())


@pytest.mark.parametrize("block", [5, 7, TOK])
@pytest.mark.parametrize("kind", KINDS)
def test_factored_gram_matches_densified_gram_across_blocks(kind: str, block: int) -> None:
    rep = _rep(kind)
    ref = _brute_force(rep)
    cross = factored_gram(rep, N, cross_probe=True, block=block)
    assert cross.dtype == torch.float64 and cross.shape == (M, N, M, N)
    torch.testing.assert_close(cross, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    assert _asymmetry(cross) < 1e-14

    diagonal = factored_gram(rep, N, cross_probe=False, block=block)
    assert diagonal.shape == (M, N, N)
    expected = torch.stack([ref[m, :, m, :] for m in range(M)])
    torch.testing.assert_close(diagonal, expected, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    assert max(_asymmetry(d) for d in diagonal) < 1e-14
    assert not bool(cross[:, N - 1].any()) and not bool(cross[:, :, :, N - 1].any())  # a sample without positions


@pytest.mark.parametrize("kind", KINDS)
def test_factored_gram_of_float32_reps_is_float64_and_symmetric(kind: str) -> None:
    """float32 factors: the products run in float64, so the Gram is that of the same numbers in float64."""
    rep32 = _rep(kind, seed=1, dtype=torch.float32)
    cross = factored_gram(rep32, N, cross_probe=True, block=7)
    assert cross.dtype == torch.float64
    torch.testing.assert_close(cross, _brute_force(rep32), rtol=1e-12, atol=1e-12 * float(cross.abs().max()))
    assert _asymmetry(cross) < 1e-14
