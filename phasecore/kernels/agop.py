"""AGOP spectrum (METRICS §4): the spectrum of ``(1/N) Σ_i J_iᵀ J_i`` without forming the P × P matrix.

Its non-zero spectrum equals the spectrum of the Gram of the per-(sample, output) gradients,
``G_(i,m),(j,m') = ⟨g_i^m, g_j^m'⟩ · scale / N`` (``scale = 1/(M d)`` for M Gaussian probes, ``1/d`` for
the exact basis), an (N M) × (N M) matrix; over the U distinct inputs of a sample (METRICS §0) it is
``D^{1/2} G_U D^{1/2}`` with ``D = diag(n_u / N)`` repeated over probes.

The headline figure is ``agop_ratio = λ_1 / λ_k`` (k = ``agop_k``, default 16), not λ_max/λ_min: the
smallest non-zero eigenvalue falls with N and M, duplicates make it zero and float32 gradients put a round-off
tail near 1e-7 λ_1, so λ_max/λ_min above a cut measures the cut. λ_1/λ_k needs ``U·M ≥ 8k`` (else null, with
the reason); below the float32 floor (``λ_k < 1e-5 λ_1``) it is reported as the bound ``1e5`` with
``censored = true``; it is ``unstable`` when the ratio of either sub-block (the first ⌈M/2⌉ probes, a seeded
half of the distinct inputs) differs by more than 0.3 in log10. ``condition = λ_max/λ_min`` over eigenvalues
above ``1e-6 λ_max`` is reported beside it for comparison with the paper; no rule reads it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from phasecore.kernels.config import KernelConfig, Probes, ProgressFn
from phasecore.kernels.device import exact_numerics
from phasecore.kernels.distinct import distinct_inputs
from phasecore.kernels.engine import ProbeGram, make_probes, probe_gram, weighted_probe_gram
from phasecore.kernels.validity import check_gram
from phasecore.sources.base import Inputs, batch_size, call_encoder, slice_inputs

#: U·M ≥ ELIGIBLE_ROWS_PER_K · k: enough distinct (input, probe) rows for λ_k to be a property of the model
ELIGIBLE_ROWS_PER_K = 8


@dataclass(frozen=True)
class AgopSpectrum:
    """Summary of an AGOP spectrum (METRICS §4). ``eigenvalues`` are descending, float64, all of them."""

    eigenvalues: np.ndarray
    ratio: float | None  # λ_1 / λ_k (a lower bound when censored); None when not eligible
    log10_ratio: float | None
    k: int
    censored: bool  # λ_k < censor_below · λ_1: ratio is the bound 1 / censor_below
    unstable: bool | None  # a sub-block's ratio differs by more than unstable_log10 in log10; None: not computed
    ratio_half_probes: float | None  # λ_1/λ_k of the first ⌈M/2⌉ probes
    ratio_half_inputs: float | None  # λ_1/λ_k of a seeded half of the distinct inputs
    reason: str | None  # why ratio is None
    condition: float | None  # λ_max / λ_min over eigenvalues above rtol · λ_max (the paper's form)
    at_cut: bool  # λ_min of condition sits within 10× of the cut
    rtol: float
    effective_rank: float  # exp(entropy of λ / Σλ), over all eigenvalues
    participation_ratio: float  # (Σλ)² / Σλ²
    decay: float | None  # α of λ_r ∝ r^(-α), least squares of log λ_r on log r over r = 1..k
    n_nonzero: int  # eigenvalues above rtol · λ_max
    rows: int  # U·M, the size of the Gram
    space: Literal["parameters", "inputs"] = "parameters"

    def to_dict(self, *, with_eigenvalues: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if with_eigenvalues:
            out["eigenvalues"] = self.eigenvalues.tolist()
        else:
            del out["eigenvalues"]
        return out


def top_k_ratio(eigenvalues: np.ndarray, k: int, *, censor_below: float = 1e-5) -> tuple[float | None, bool]:
    """(λ_1/λ_k, censored) of a descending spectrum; (None, False) when it has fewer than k eigenvalues or
    λ_1 ≤ 0. When ``λ_k < censor_below · λ_1`` the ratio is the bound ``1/censor_below`` and censored."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size < k or not lam[0] > 0:
        return None, False
    if lam[k - 1] < censor_below * lam[0]:
        return 1.0 / censor_below, True
    return float(lam[0] / lam[k - 1]), False


def spectrum_stats(
    eigenvalues: np.ndarray,
    *,
    k: int = 16,
    censor_below: float = 1e-5,
    rtol: float = 1e-6,
    rows: int | None = None,
    space: Literal["parameters", "inputs"] = "parameters",
) -> AgopSpectrum:
    """Ratio, condition, effective rank, participation ratio and decay of a PSD spectrum (METRICS §4).

    ``eigenvalues`` in any order (round-off negatives count as zero: validity is checked on the Gram);
    ``rows`` the Gram's size U·M for the eligibility rule ``U·M ≥ 8k`` (default: the number of eigenvalues).
    The stability flag needs the Gram's sub-blocks: ``spectrum_of_gram`` sets it."""
    lam = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None))[::-1]
    rows = lam.size if rows is None else rows
    top = float(lam[0]) if lam.size else 0.0
    if top <= 0:
        return AgopSpectrum(
            lam, None, None, k, False, None, None, None, "the spectrum is zero", None, False, rtol,
            0.0, 0.0, None, 0, rows, space,
        )
    reason = None
    ratio: float | None = None
    censored = False
    if rows < ELIGIBLE_ROWS_PER_K * k:
        reason = (
            f"λ_1/λ_{k} needs U·M ≥ {ELIGIBLE_ROWS_PER_K}k = {ELIGIBLE_ROWS_PER_K * k} distinct (input, probe) rows; "
            f"this spectrum has {rows}: raise N or the probes, or lower agop_k"
        )
    else:
        ratio, censored = top_k_ratio(lam, k, censor_below=censor_below)
    nonzero = lam[lam > rtol * top]
    p = lam[lam > 0] / lam.sum()
    kk = min(k, nonzero.size)
    decay = None
    if kk >= 2:
        decay = -float(np.polyfit(np.log(np.arange(1, kk + 1)), np.log(nonzero[:kk]), 1)[0])
    return AgopSpectrum(
        eigenvalues=lam,
        ratio=ratio,
        log10_ratio=None if ratio is None else math.log10(ratio),
        k=k,
        censored=censored,
        unstable=None,
        ratio_half_probes=None,
        ratio_half_inputs=None,
        reason=reason,
        condition=float(nonzero[0] / nonzero[-1]),
        at_cut=bool(nonzero[-1] < 10 * rtol * top),
        rtol=rtol,
        effective_rank=float(np.exp(-(p * np.log(p)).sum())),
        participation_ratio=float(lam.sum() ** 2 / (lam**2).sum()),
        decay=decay,
        n_nonzero=int(nonzero.size),
        rows=rows,
        space=space,
    )


def spectrum_of_gram(
    gram: np.ndarray,
    n_probes: int,
    *,
    k: int = 16,
    censor_below: float = 1e-5,
    unstable_log10: float = 0.3,
    rtol: float = 1e-6,
    seed: int = 0,
    space: Literal["parameters", "inputs"] = "parameters",
    what: str = "AGOP",
) -> AgopSpectrum:
    """The AGOP summary of a weighted (M U, M U) Gram (probe-major rows: row ``m U + u``), checked for
    validity first (METRICS §0), with the stability flag from its two sub-blocks (METRICS §4)."""
    lam = check_gram(gram, what)
    stats = spectrum_stats(lam, k=k, censor_below=censor_below, rtol=rtol, rows=gram.shape[0], space=space)
    if stats.ratio is None:
        return stats
    m = n_probes
    u = gram.shape[0] // m
    half_m = math.ceil(m / 2)
    probe_rows = np.arange(half_m * u)
    kept = np.sort(np.random.default_rng([seed, 4]).choice(u, size=math.ceil(u / 2), replace=False))
    input_rows = (np.arange(m)[:, None] * u + kept[None, :]).reshape(-1)
    sub_ratios = []
    for rows in (probe_rows, input_rows):
        sub = np.sort(np.clip(np.linalg.eigvalsh(gram[np.ix_(rows, rows)]), 0.0, None))[::-1]
        sub_ratios.append(top_k_ratio(sub, k, censor_below=censor_below)[0])
    full = math.log10(stats.ratio)
    unstable = any(r is None or abs(math.log10(r) - full) > unstable_log10 for r in sub_ratios)
    return replace(stats, unstable=unstable, ratio_half_probes=sub_ratios[0], ratio_half_inputs=sub_ratios[1])


def spectrum_from_probe_gram(
    gram: ProbeGram,
    *,
    counts: np.ndarray | None = None,
    k: int = 16,
    censor_below: float = 1e-5,
    unstable_log10: float = 0.3,
    rtol: float = 1e-6,
) -> AgopSpectrum:
    """The parameter-space AGOP spectrum of an already computed cross-probe Gram over U distinct inputs with
    multiplicities ``counts`` (U,) (default: all distinct)."""
    weights = None if counts is None else np.asarray(counts, dtype=np.float64) / float(np.sum(counts))
    return spectrum_of_gram(
        gram.agop_gram(weights),
        gram.n_probes,
        k=k,
        censor_below=censor_below,
        unstable_log10=unstable_log10,
        rtol=rtol,
        seed=gram.seed,
    )


@exact_numerics()  # no TF32 on a GPU inside (the caller's settings restored after)
def agop_spectrum(
    model: nn.Module,
    inputs: Inputs,
    config: KernelConfig | None = None,
    *,
    space: Literal["parameters", "inputs"] = "parameters",
    rtol: float = 1e-6,
    k: int = 16,
    censor_below: float = 1e-5,
    progress: ProgressFn | None = None,
    **options: Any,
) -> AgopSpectrum:
    """AGOP spectrum of ``model`` on ``inputs`` (METRICS §4).

    ``space="parameters"``: ``J_i = ∂f(x_i)/∂θ`` (the paper's eq. 4). ``space="inputs"``: ``J_i =
    ∂f(x_i)/∂x`` with x the pixels (tensor inputs) or the input token embeddings (mapping inputs with
    ``input_ids``; padding masked out), as in Radhakrishnan et al. Identical inputs are computed once and
    weighted by their multiplicity (METRICS §0). ``config`` / ``options``: the kernel options (``KernelConfig``);
    the input space uses its probes, seed and chunk size.
    """
    config = KernelConfig.build(config, options)
    distinct = distinct_inputs(inputs)
    if space == "parameters":
        gram = probe_gram(model, distinct.inputs, config, cross_probe=True, progress=progress, stage="spectrum")
        return spectrum_from_probe_gram(gram, counts=distinct.counts, k=k, censor_below=censor_below, rtol=rtol)
    g, scale = input_gradients(
        model, distinct.inputs, probes=config.probes, seed=config.seed, chunk_size=config.chunk_size
    )
    m, u, _ = g.shape
    flat = g.reshape(m * u, -1).to(torch.float64)
    input_gram = weighted_probe_gram((flat @ flat.T).numpy() * scale, distinct.counts / distinct.n, m)
    return spectrum_of_gram(
        input_gram,
        m,
        k=k,
        censor_below=censor_below,
        rtol=rtol,
        seed=config.seed,
        space="inputs",
        what="input-space AGOP",
    )


def input_gradients(
    model: nn.Module, inputs: Inputs, *, probes: Probes = 4, seed: int = 0, chunk_size: int = 32
) -> tuple[torch.Tensor, float]:
    """Per-(probe, sample) input gradients ``(M, N, D)`` and the probe scale of METRICS §1."""
    n = batch_size(inputs)
    rows: list[torch.Tensor] = []
    u: torch.Tensor | None = None
    scale = 1.0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, chunk_size):
            chunk = slice_inputs(inputs, slice(start, start + chunk_size))
            leaf, out = _forward_with_input_leaf(model, chunk)
            if u is None:
                u, kind = make_probes(probes, out.shape[1], seed, out.dtype, out.device)
                d = out.shape[1]
                scale = {"gaussian": 1 / (u.shape[0] * d), "exact": 1 / d}.get(kind, 1 / u.shape[0])
            per_probe = []
            for m in range(u.shape[0]):
                (g,) = torch.autograd.grad((out * u[m]).sum(), leaf, retain_graph=m < u.shape[0] - 1)
                if isinstance(chunk, dict) and "attention_mask" in chunk:
                    g = g * chunk["attention_mask"].unsqueeze(-1).to(g.dtype)
                per_probe.append(g.reshape(g.shape[0], -1).detach())
            rows.append(torch.stack(per_probe))
    finally:
        model.train(was_training)
    return torch.cat(rows, dim=1), scale


def _forward_with_input_leaf(model: nn.Module, chunk: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model with its input (pixels, or the token-embedding output) as a gradient leaf."""
    if isinstance(chunk, torch.Tensor):  # else the dict of keyword tensors that slice_inputs makes
        leaf = chunk.detach().clone().requires_grad_(True)
        return leaf, call_encoder(model, leaf)
    table = _token_embedding(model, chunk["input_ids"])
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = table.register_forward_hook(hook)
    try:
        out = call_encoder(model, chunk)
    finally:
        handle.remove()
    return captured[0], out


def _token_embedding(model: nn.Module, input_ids: torch.Tensor) -> nn.Embedding:
    """The embedding table that input_ids index: the largest nn.Embedding of the model."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        raise ValueError("input-space AGOP of a mapping input needs an nn.Embedding for the tokens")
    return max(tables, key=lambda m: m.num_embeddings)
