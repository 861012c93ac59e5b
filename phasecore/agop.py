"""AGOP spectrum (METRICS §4): the spectrum of ``(1/N) Σ_i J_iᵀ J_i`` without forming the P × P matrix.

Its non-zero spectrum equals the spectrum of the Gram of the per-(sample, output) gradients,
``G_(i,m),(j,m') = ⟨g_i^m, g_j^m'⟩ · scale / N`` (``scale = 1/(M d)`` for M Gaussian probes, ``1/d`` for
the exact basis), an (N M) × (N M) matrix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from phasecore.ntk.engine import Method, ProbeGram, Probes, ProgressFn, make_probes, probe_gram
from phasecore.sources.base import Inputs, batch_size, call_encoder, slice_inputs


@dataclass(frozen=True)
class AgopSpectrum:
    """Summary of an AGOP spectrum. ``eigenvalues`` are descending, float64, all of them (zeros too)."""

    eigenvalues: np.ndarray
    ratio: float  # λ_max / λ_min over the numerically non-zero spectrum (eigenvalues > rtol · λ_max)
    log10_ratio: float
    effective_rank: float  # exp(entropy of λ / Σλ)
    participation_ratio: float  # (Σλ)² / Σλ²
    decay: float  # α of λ_r ∝ r^(-α), least squares of log λ_r on log r over the top half of the spectrum
    n_nonzero: int
    rtol: float
    space: Literal["parameters", "inputs"] = "parameters"
    # λ_min lies within 10× of the cut rtol·λ_max: the spectrum is rank-deficient (repeated inputs, fewer
    # distinct samples than N·M) and the kept tail is round-off, so the ratio reflects rtol, not the model
    at_cut: bool = False

    def to_dict(self, *, with_eigenvalues: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["eigenvalues"] = self.eigenvalues.tolist() if with_eigenvalues else None
        if not with_eigenvalues:
            del out["eigenvalues"]
        return out


def spectrum_stats(
    eigenvalues: np.ndarray, *, rtol: float = 1e-10, space: Literal["parameters", "inputs"] = "parameters"
) -> AgopSpectrum:
    """Ratio, effective rank, participation ratio and decay of a PSD spectrum (METRICS §4)."""
    lam = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None))[::-1]
    top = float(lam[0]) if lam.size else 0.0
    nonzero = lam[lam > rtol * top] if top > 0 else lam[:0]
    if nonzero.size == 0:
        nan = float("nan")
        return AgopSpectrum(lam, nan, nan, 0.0, 0.0, nan, 0, rtol, space)
    p = nonzero / nonzero.sum()
    ratio = float(nonzero[0] / nonzero[-1])
    half = max(2, nonzero.size // 2)
    ranks = np.arange(1, nonzero.size + 1)[:half]
    if half <= nonzero.size and half >= 2:
        slope = float(np.polyfit(np.log(ranks), np.log(nonzero[:half]), 1)[0])
    else:
        slope = float("nan")
    return AgopSpectrum(
        eigenvalues=lam,
        ratio=ratio,
        log10_ratio=float(np.log10(ratio)),
        effective_rank=float(np.exp(-(p * np.log(p)).sum())),
        participation_ratio=float(nonzero.sum() ** 2 / (nonzero**2).sum()),
        decay=-slope,
        n_nonzero=int(nonzero.size),
        rtol=rtol,
        space=space,
        at_cut=bool(nonzero[-1] < 10 * rtol * top),
    )


def spectrum_from_probe_gram(gram: ProbeGram, *, rtol: float = 1e-10) -> AgopSpectrum:
    """The parameter-space AGOP spectrum of an already computed cross-probe Gram."""
    return spectrum_stats(np.linalg.eigvalsh(gram.agop_gram()), rtol=rtol)


def agop_spectrum(
    model: nn.Module,
    inputs: Inputs,
    *,
    probes: Probes = 4,
    space: Literal["parameters", "inputs"] = "parameters",
    method: Method = "exact",
    sketch_dim: int = 8192,
    seed: int = 0,
    rtol: float = 1e-10,
    chunk_size: int = 32,
    params: Iterable[str] | None = None,
    progress: ProgressFn | None = None,
) -> AgopSpectrum:
    """AGOP spectrum of ``model`` on ``inputs`` (METRICS §4).

    ``space="parameters"``: ``J_i = ∂f(x_i)/∂θ`` (the paper's eq. 4). ``space="inputs"``: ``J_i =
    ∂f(x_i)/∂x`` with x the pixels (tensor inputs) or the input token embeddings (mapping inputs with
    ``input_ids``; padding masked out), as in Radhakrishnan et al.
    """
    if space == "parameters":
        gram = probe_gram(
            model,
            inputs,
            probes=probes,
            method=method,
            sketch_dim=sketch_dim,
            seed=seed,
            chunk_size=chunk_size,
            params=params,
            cross_probe=True,
            progress=progress,
            stage="spectrum",
        )
        return spectrum_from_probe_gram(gram, rtol=rtol)
    g, scale = input_gradients(model, inputs, probes=probes, seed=seed, chunk_size=chunk_size)
    m, n, _ = g.shape
    flat = g.reshape(m * n, -1).to(torch.float64)
    gram = (flat @ flat.T).numpy() * (scale / n)
    return spectrum_stats(np.linalg.eigvalsh(gram), rtol=rtol, space="inputs")


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
                u, kind = make_probes(probes, out.shape[1], seed, out.dtype)
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
    if not isinstance(chunk, dict):
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
