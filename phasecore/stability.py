"""Per-model NTK stability S_NTK and its phase (METRICS §3).

From θ_0, T full-batch gradient-descent steps on a seeded subset of n_s samples with seeded random
targets ``t_i ~ N(0, 1)`` and loss ``L = (1/2n_s) Σ_i (u_0·f(x_i) − t_i)²``, step size
``η = 1 / λ_max(K_0 / n_s)`` where ``K_0`` is the scalar NTK of ``u_0·f`` (half the linear-stability
edge 2/λ_max). Then ``S_NTK = A(Θ̂(θ_0), Θ̂(θ_T))`` on the same subset, estimator and seed. The probe
trains a deep copy: the caller's model is never changed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from phasecore.alignment import kernel_alignment
from phasecore.ntk.engine import Method, Probes, ProgressFn, probe_gram
from phasecore.rules import phase_of
from phasecore.sources.base import Inputs, batch_size, call_encoder, slice_inputs


@dataclass(frozen=True)
class StabilityResult:
    s_ntk: float  # A(Θ̂_0, Θ̂_T), uncentered (the paper's)
    s_ntk_centered: float
    phase: str
    eta: float
    lambda_max: float  # of K_0 / n_s
    steps: int
    subset: int
    loss_start: float
    loss_end: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The seeded probe-training subset: all samples when n ≤ size."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def stability_probe(
    model: nn.Module,
    inputs: Inputs,
    *,
    probes: Probes = 4,
    method: Method = "exact",
    sketch_dim: int = 8192,
    seed: int = 0,
    steps: int = 10,
    subset: int = 128,
    chunk_size: int = 32,
    params: Iterable[str] | None = None,
    progress: ProgressFn | None = None,
) -> StabilityResult:
    """S_NTK and the phase of one model (METRICS §3); see the module docstring for the protocol."""
    started = time.perf_counter()
    idx = subset_indices(batch_size(inputs), subset, seed)
    sub = slice_inputs(inputs, torch.as_tensor(idx))
    n_s = len(idx)
    work = copy.deepcopy(model).eval()
    selected = set(params) if params is not None else {name for name, _ in work.named_parameters()}
    theta = [p for name, p in work.named_parameters() if name in selected]
    kw: dict[str, Any] = dict(
        method=method, sketch_dim=sketch_dim, seed=seed, chunk_size=chunk_size, params=selected
    )

    def report(stage_fraction: float) -> None:
        if progress:
            progress("stability", stage_fraction)

    first = probe_gram(work, sub, probes=probes, **kw)
    gram0 = first.ntk()
    # the loss passes use the chunk the engine fitted to the memory budget: on a CPU, small batches of
    # large images also run faster per sample (they stay in cache)
    loss_chunk = int(first.info.get("chunk_size", chunk_size))
    report(0.3)
    with torch.no_grad():
        d = call_encoder(work, slice_inputs(sub, slice(0, 1))).shape[1]
    gen = torch.Generator().manual_seed(seed + 1)
    dtype = theta[0].dtype
    u0 = torch.randn(d, generator=gen, dtype=torch.float64)
    device = theta[0].device
    u0 = (u0 / u0.norm()).to(dtype=dtype, device=device)
    targets = torch.randn(n_s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    k0 = probe_gram(work, sub, probes=u0[None], **{**kw, "method": "exact"}).ntk()  # ⟨∇u0·f_i, ∇u0·f_j⟩
    lambda_max = float(np.linalg.eigvalsh(k0 / n_s)[-1])
    eta = 1.0 / lambda_max if lambda_max > 0 else 0.0
    report(0.4)

    losses = []
    was = {p: p.requires_grad for p in work.parameters()}
    for p in work.parameters():
        p.requires_grad_(p in set(theta))
    for step in range(steps + 1):
        loss_value, grads = _loss_and_grad(work, sub, u0, targets, theta, loss_chunk)
        losses.append(loss_value)
        if step == steps:
            break
        with torch.no_grad():
            for p, g in zip(theta, grads, strict=True):
                p.sub_(eta * g)
        report(0.4 + 0.4 * (step + 1) / steps)
    for p, flag in was.items():
        p.requires_grad_(flag)

    gram_t = probe_gram(work, sub, probes=probes, **kw).ntk()
    report(1.0)
    s = kernel_alignment(gram0, gram_t)
    return StabilityResult(
        s_ntk=s,
        s_ntk_centered=kernel_alignment(gram0, gram_t, centered=True),
        phase=phase_of(s),
        eta=eta,
        lambda_max=lambda_max,
        steps=steps,
        subset=n_s,
        loss_start=losses[0],
        loss_end=losses[-1],
        seconds=time.perf_counter() - started,
    )


def _loss_and_grad(
    model: nn.Module,
    inputs: Inputs,
    u0: torch.Tensor,
    targets: torch.Tensor,
    theta: list[nn.Parameter],
    chunk_size: int,
) -> tuple[float, list[torch.Tensor]]:
    """Full-batch L = (1/2n) Σ (u0·f(x_i) − t_i)² and ∇_θ L, accumulated over chunks (bounded memory)."""
    n = targets.shape[0]
    total = 0.0
    grads = [torch.zeros_like(p) for p in theta]
    for start in range(0, n, chunk_size):
        chunk = slice_inputs(inputs, slice(start, start + chunk_size))
        pred = call_encoder(model, chunk) @ u0
        loss = ((pred - targets[start : start + chunk_size]) ** 2).sum() / (2 * n)
        for acc, g in zip(grads, torch.autograd.grad(loss, theta, allow_unused=True), strict=True):
            if g is not None:
                acc += g
        total += float(loss.detach())
    return total, grads
