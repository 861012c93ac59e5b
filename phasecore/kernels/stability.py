"""Per-model NTK stability S_NTK and its phase (METRICS §3).

From θ_0, T full-batch gradient-descent steps on a seeded subset of n_s samples with seeded random
targets ``t_i ~ N(0, 1)`` and loss ``L = (1/2n_s) Σ_i (u_0·f(x_i) − t_i)²``, step size
``η = c / λ_max(K_0 / n_s)`` where ``K_0`` is the scalar NTK of ``u_0·f``; c = 1 is half the linear-stability
edge 2/λ_max. Then ``S_NTK = A(Θ̂(θ_0), Θ̂(θ_T))`` on the same subset, estimator and seed. S_NTK compares only
at equal (n_s, T, c), so all three are recorded; ``lr_scales`` adds the curve of S_NTK over c (the phase uses
c = 1). Kernels and the training steps run over the distinct inputs of the subset (METRICS §0: the loss of
identical inputs is a weighted sum, so loss and gradient are the same). The probe trains deep copies: the
caller's model is never changed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from phasecore.kernels.config import KernelConfig, ProgressFn
from phasecore.kernels.device import exact_numerics
from phasecore.kernels.distinct import Distinct, distinct_inputs
from phasecore.kernels.engine import probe_gram
from phasecore.kernels.validity import check_gram
from phasecore.paper import phase_of
from phasecore.similarity.kernel_alignment import kernel_alignment
from phasecore.sources.base import Inputs, batch_size, call_encoder, slice_inputs

Precision = Literal["float32", "float64"]


@dataclass(frozen=True)
class StabilityStep:
    """S_NTK after T steps at one step size η = lr_scale / λ_max."""

    lr_scale: float
    eta: float
    s_ntk: float  # A(Θ̂_0, Θ̂_T), uncentered (the paper's)
    s_ntk_centered: float
    phase: str
    loss_start: float
    loss_end: float


@dataclass(frozen=True)
class StabilityResult:
    s_ntk: float  # at lr_scale = 1
    s_ntk_centered: float
    phase: str
    eta: float
    lambda_max: float  # of K_0 / n_s
    steps: int  # T
    subset: int  # n_s
    lr_scale: float  # the c of s_ntk and the phase: 1
    n_distinct: int  # distinct inputs in the subset
    loss_start: float
    loss_end: float
    seconds: float
    curve: list[StabilityStep] = field(default_factory=list)  # one point per lr_scale, ascending
    # seconds per part: gram_0 (Θ̂(θ_0) of the subset; 0 when taken from the profile's kernel), k_0 (the scalar
    # kernel for η), steps (the T gradient steps of every step size), gram_T (Θ̂(θ_T) of every step size)
    timings: dict[str, float] = field(default_factory=dict)
    gram0_reused: bool = False  # Θ̂(θ_0) was the sub-block of the profile's own kernel (same probes and method)
    precision: str = "float32"  # of K_0, the training steps and Θ̂(θ_T)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The seeded probe-training subset: all samples when n ≤ size."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


@exact_numerics()  # the training steps too: no TF32 on a GPU (the caller's settings restored after)
def stability_probe(
    model: nn.Module,
    inputs: Inputs,
    config: KernelConfig | None = None,
    *,
    steps: int = 10,
    subset: int = 128,
    progress: ProgressFn | None = None,
    lr_scales: Sequence[float] = (1.0,),
    kernel: np.ndarray | None = None,
    kernel_chunk: int | None = None,
    precision: Precision = "float32",
    **options: Any,
) -> StabilityResult:
    """S_NTK and the phase of one model (METRICS §3), and S_NTK at each step-size scale of ``lr_scales``
    (1 is always included); see the module docstring for the protocol. ``config`` / ``options``: the kernel
    options (``KernelConfig``) of every Gram the probe computes.

    ``kernel``: the model's Θ̂(θ_0) over all N inputs, ``(N, N)``, computed with the same probes, method, seed,
    sketch width and parameters (the profile's own kernel stage). Θ̂(θ_0) of the subset is then its
    ``[idx, idx]`` block, not a second computation: each entry of a probe Gram depends only on its two
    samples, the probes and (for the sketch) the seeded sketch, never on the other samples. ``kernel_chunk``: the
    chunk the engine fitted when it computed ``kernel`` (its ``info["chunk_size"]``), which the loss passes then
    use (default ``chunk_size``).

    ``precision``: ``float64`` runs K_0, the T steps and Θ̂(θ_T) on a float64 copy of the model and inputs (the
    steps amplify float32 rounding, so S_NTK in float32 differs across thread counts and CPUs; docs/benchmarks.md
    measures by how much); Θ̂(θ_0) stays the model's own (its rounding is not amplified)."""
    started = time.perf_counter()
    config = KernelConfig.build(config, options)
    method, seed, chunk_size = config.method, config.seed, config.chunk_size
    timings: dict[str, float] = {}
    scales = sorted(set(float(c) for c in lr_scales) | {1.0})
    idx = subset_indices(batch_size(inputs), subset, seed)
    first_input = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    distinct = distinct_inputs(slice_inputs(inputs, torch.as_tensor(idx, device=first_input.device)))
    n_s = len(idx)
    selected = set(config.params) if config.params is not None else {name for name, _ in model.named_parameters()}
    kw = config.with_params(selected)

    def report(stage_fraction: float) -> None:
        if progress:
            progress("stability", stage_fraction)

    tick = time.perf_counter()
    if kernel is not None:
        if kernel.shape != (batch_size(inputs),) * 2:
            raise ValueError(f"the kernel must be (N, N) over the inputs, got {kernel.shape}")
        gram0 = np.asarray(kernel, dtype=np.float64)[np.ix_(idx, idx)]
        loss_chunk = kernel_chunk or chunk_size
    else:
        first = probe_gram(model, distinct.inputs, kw)
        gram0 = distinct.expand_gram(first.ntk())
        # the loss passes use the chunk the engine fitted to the memory budget: on a CPU, small batches of
        # large images also run faster per sample (they stay in cache)
        loss_chunk = int(first.info.get("chunk_size", chunk_size))
    timings["gram_0"] = time.perf_counter() - tick
    tick = time.perf_counter()
    if precision == "float64":
        model = copy.deepcopy(model).double()
        distinct = Distinct(inputs=_as_float64(distinct.inputs), inverse=distinct.inverse, counts=distinct.counts)
    elif precision != "float32":
        raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
    with torch.no_grad():
        d = call_encoder(model, slice_inputs(distinct.inputs, slice(0, 1))).shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    reference = next(p for name, p in model.named_parameters() if name in selected)
    u0 = torch.randn(d, generator=gen, dtype=torch.float64, device="cpu")
    u0 = (u0 / u0.norm()).to(dtype=reference.dtype, device=reference.device)
    targets = torch.randn(n_s, generator=gen, dtype=torch.float64, device="cpu")
    targets = targets.to(dtype=reference.dtype, device=reference.device)
    # ⟨∇u0·f, ∇u0·f⟩, exact; a model whose kernel needed the sketch (its gradients exceed the memory budget, as
    # MiniLM's 128 distinct shapes captions do) gets it exactly where it fits, else from the sketch ("auto")
    k0_method = "exact" if method == "exact" else "auto"
    k0 = probe_gram(model, distinct.inputs, kw, probes=u0[None], method=k0_method).ntk()
    lambda_max = float(check_gram(distinct.expand_gram(k0) / n_s, "stability K_0")[-1])
    timings["k_0"] = time.perf_counter() - tick
    timings["steps"] = timings["gram_T"] = 0.0
    report(0.3)

    curve = []
    for i, c in enumerate(scales):
        eta = c / lambda_max if lambda_max > 0 else 0.0
        span = (0.3 + 0.7 * i / len(scales), 0.7 / len(scales))
        point = _train_and_compare(
            model, distinct, gram0, u0, targets, selected, eta, c, steps, loss_chunk, kw, report, span,
            timings,
        )
        curve.append(point)
    main = next(point for point in curve if point.lr_scale == 1.0)
    report(1.0)
    return StabilityResult(
        s_ntk=main.s_ntk,
        s_ntk_centered=main.s_ntk_centered,
        phase=main.phase,
        eta=main.eta,
        lambda_max=lambda_max,
        steps=steps,
        subset=n_s,
        lr_scale=1.0,
        n_distinct=distinct.u,
        loss_start=main.loss_start,
        loss_end=main.loss_end,
        seconds=time.perf_counter() - started,
        curve=curve,
        timings={part: round(value, 3) for part, value in timings.items()},
        gram0_reused=kernel is not None,
        precision=precision,
    )


def _as_float64(inputs: Inputs) -> Inputs:
    """Floating tensors of ``inputs`` in float64 (token ids and integer masks stay as they are)."""
    if isinstance(inputs, Mapping):
        return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    return inputs.double() if inputs.is_floating_point() else inputs


def _train_and_compare(
    model: nn.Module,
    distinct: Distinct,
    gram0: np.ndarray,
    u0: torch.Tensor,
    targets: torch.Tensor,
    selected: set[str],
    eta: float,
    lr_scale: float,
    steps: int,
    loss_chunk: int,
    kw: KernelConfig,
    report: Callable[[float], None],
    span: tuple[float, float],
    timings: dict[str, float],
) -> StabilityStep:
    """T steps of gradient descent at ``eta`` on a deep copy, then S_NTK = A(Θ̂_0, Θ̂_T) (seconds added to
    ``timings["steps"]`` and ``timings["gram_T"]``)."""
    tick = time.perf_counter()
    work = copy.deepcopy(model).eval()
    theta = [p for name, p in work.named_parameters() if name in selected]
    for p in work.parameters():
        p.requires_grad_(False)
    for p in theta:
        p.requires_grad_(True)
    losses = []
    # the loss over the subset's distinct inputs, each weighted by its count (the same loss and gradient, METRICS
    # §0): per distinct input u, c_u·f_u² − 2·f_u·Σ_{i∈u} t_i + Σ_{i∈u} t_i²
    counts = torch.as_tensor(distinct.counts, dtype=targets.dtype, device=targets.device)
    inverse = torch.as_tensor(distinct.inverse, device=targets.device)
    sums = torch.zeros(distinct.u, dtype=targets.dtype, device=targets.device).index_add_(0, inverse, targets)
    squares = torch.zeros_like(sums).index_add_(0, inverse, targets**2)
    loss_terms = (counts, sums, squares, targets.shape[0])
    for step in range(steps + 1):
        if step == steps:  # the final loss only: no gradient
            losses.append(_loss_and_grad(work, distinct.inputs, u0, loss_terms, theta, loss_chunk, grad=False)[0])
            break
        loss_value, grads = _loss_and_grad(work, distinct.inputs, u0, loss_terms, theta, loss_chunk)
        losses.append(loss_value)
        with torch.no_grad():
            for p, g in zip(theta, grads, strict=True):
                p.sub_(eta * g)
        report(span[0] + span[1] * 0.8 * (step + 1) / steps)
    timings["steps"] += time.perf_counter() - tick
    tick = time.perf_counter()
    gram_t = distinct.expand_gram(probe_gram(work, distinct.inputs, kw).ntk())
    timings["gram_T"] += time.perf_counter() - tick
    report(span[0] + span[1])
    s = kernel_alignment(gram0, gram_t)
    return StabilityStep(
        lr_scale=lr_scale,
        eta=eta,
        s_ntk=s,
        s_ntk_centered=kernel_alignment(gram0, gram_t, centered=True),
        phase=phase_of(s),
        loss_start=losses[0],
        loss_end=losses[-1],
    )


def _loss_and_grad(
    model: nn.Module,
    inputs: Inputs,
    u0: torch.Tensor,
    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int],
    theta: list[nn.Parameter],
    chunk_size: int,
    *,
    grad: bool = True,
) -> tuple[float, list[torch.Tensor]]:
    """Full-batch L = (1/2n) Σ_i (u0·f(x_i) − t_i)² and ∇_θ L over the U distinct inputs, accumulated over chunks
    (bounded memory); ``terms`` = (c_u, Σ_{i∈u} t_i, Σ_{i∈u} t_i², n). ``grad=False``: the loss alone."""
    counts, sums, squares, n = terms
    total = 0.0
    grads = [torch.zeros_like(p) for p in theta] if grad else []
    for start in range(0, counts.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = slice_inputs(inputs, rows)
        with torch.set_grad_enabled(grad):
            pred = call_encoder(model, chunk) @ u0
            loss = (counts[rows] * pred**2 - 2 * pred * sums[rows] + squares[rows]).sum() / (2 * n)
        if grad:
            for acc, g in zip(grads, torch.autograd.grad(loss, theta, allow_unused=True), strict=True):
                if g is not None:
                    acc += g
        total += float(loss.detach())
    return total, grads
