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
from torch import nn

from phasecore.kernels import probe_gram, sinks
from phasecore.kernels.engine import make_probes
from phasecore.kernels.grad_rules import _SwappedFactored
from phasecore.kernels.reps import Dense, Factored, factored_gram
from tests.helpers.models import factored_text_models, short_text_batch

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


BLOCK = 5  # positions per block in the engine's exact sink: every factored layer below spans several blocks
TEXT = factored_text_models()
FORMS = {"bert": {"linear", "table"}, "gpt2": {"conv1d", "table"}, "albert": {"linear", "table"}}


def _form(rep: Factored) -> str:
    return "table" if rep.ids is not None else "conv1d" if isinstance(rep, _SwappedFactored) else "linear"


def _autograd_probe_gram(model: nn.Module, inputs: dict[str, torch.Tensor], probes: torch.Tensor) -> torch.Tensor:
    """G[m,i,m',j] from torch.autograd, one sample and one probe at a time, over every parameter."""
    params = list(model.parameters())
    n = inputs["input_ids"].shape[0]
    rows = torch.zeros(probes.shape[0], n, sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(n):
        out = model(**{k: v[i : i + 1] for k, v in inputs.items()})[0]
        for m, u in enumerate(probes):
            grads = torch.autograd.grad((out * u).sum(), params, retain_graph=True, allow_unused=True)
            rows[m, i] = torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
            )
    flat = rows.reshape(-1, rows.shape[-1])
    return (flat @ flat.T).reshape(probes.shape[0], n, probes.shape[0], n)


@pytest.mark.parametrize("name", sorted(TEXT))
def test_probe_gram_cross_probe_matches_autograd_when_layers_span_blocks(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """probe_gram(cross_probe=True) of a tiny transformer whose factored layers see more positions than one
    block of the exact sink (over two chunks), against autograd; its (MN, MN) Gram is symmetric and PSD."""
    forms: dict[str, str] = {}  # parameter group -> form of its rep, as the engine hands it to the sink
    positions: dict[str, int] = {}  # parameter group -> positions over all chunks
    add = sinks.ExactSink.add

    def recording_add(self: sinks.ExactSink, key: str, start: int, rows: int, rep: Dense | Factored) -> None:
        if isinstance(rep, Factored):
            forms[key] = _form(rep)
            positions[key] = positions.get(key, 0) + rep.seg.numel()
        add(self, key, start, rows, rep)

    def small_blocks(rep: Factored, n_rows: int, *, cross_probe: bool) -> torch.Tensor:
        return factored_gram(rep, n_rows, cross_probe=cross_probe, block=BLOCK)

    monkeypatch.setattr(sinks.ExactSink, "add", recording_add)
    monkeypatch.setattr(sinks, "factored_gram", small_blocks)
    model = TEXT[name].double().eval()
    inputs = short_text_batch()
    result = probe_gram(model, inputs, probes=3, method="exact", cross_probe=True, chunk_size=3)
    assert result.info["per_sample_loop_params"] == [] and result.method == "exact"
    assert {forms[k] for k in forms if positions[k] > BLOCK} == FORMS[name], (forms, positions)
    if name == "albert":  # the shared layer's two calls per sample: twice as many positions as tokens
        assert max(positions[k] for k in forms if forms[k] == "linear") == 2 * int(inputs["attention_mask"].sum())

    m, n = 3, inputs["input_ids"].shape[0]
    probes, _ = make_probes(3, result.n_outputs, result.seed, torch.float64)
    ref = _autograd_probe_gram(model, inputs, probes)
    gram = torch.from_numpy(result.gram)
    torch.testing.assert_close(gram, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))

    flat = gram.reshape(m * n, m * n)
    assert float((flat - flat.T).abs().max()) <= 1e-12 * float(flat.abs().max())
    eigenvalues = torch.linalg.eigvalsh((flat + flat.T) / 2)
    assert float(eigenvalues.min()) >= -1e-10 * float(eigenvalues.max())

    diagonal = probe_gram(model, inputs, probes=3, method="exact", cross_probe=False, chunk_size=3)
    expected = torch.stack([ref[k, :, k, :] for k in range(m)])
    torch.testing.assert_close(torch.from_numpy(diagonal.gram), expected, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
