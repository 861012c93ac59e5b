"""The kernel engine: per-(probe, sample) gradient Grams without the N × P Jacobian.

For a chunk of C samples the engine runs one forward pass with hooks on every layer that owns
parameters of θ, then one backward pass per output probe ``u_m``: the hooks see each layer's input
and output gradient, and the layer's rule (``rules.py``) turns them into per-sample gradients of its
own parameters in a compact form. A sink (``sinks.py``) turns those into the Gram, exactly or through
CountSketch. On the first chunk every rule is checked against the batched gradient; parameters whose
rule does not reproduce it (an unusual layer, an in-place trick) are handled by an exact per-sample
loop instead, so the result is exact for any model that treats samples independently (eval mode).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from phasecore.errors import DeviceOutOfMemory, InvalidSettings
from phasecore.kernels.config import Gradients, KernelConfig, Probes, ProgressFn
from phasecore.kernels.device import (
    eager_attention,
    exact_numerics,
    free_bytes,
    is_out_of_memory,
    memory_budget,
    needed_bytes,
    release,
)
from phasecore.kernels.grad_rules import Call, rule_for
from phasecore.kernels.reps import Dense, Factored
from phasecore.kernels.sinks import ExactSink, SketchSink
from phasecore.sources.base import Inputs, batch_size, call_encoder, slice_inputs

log = logging.getLogger(__name__)

#: Device types on which transformers models run eager attention for the engine's passes. On a CPU, SDPA is
#: handled as it is (it has no parameters: the rules of the linear layers around it are checked exact) and
#: is cheaper: BERT-base, N = 64, 16 tokens, M = 1 cost 29.4 s CPU under SDPA against 35.7 s switched to eager
#: (docs/benchmarks.md). On CUDA, eager keeps to plain matmuls under deterministic algorithms (the fused
#: attention backward kernels are not deterministic); bench/attention.py --device cuda measures both.
EAGER_ATTENTION_ON: frozenset[str] = frozenset({"cuda"})


@dataclass
class ProbeGram:
    """Raw inner products of per-(probe, sample) gradients, ``G[m,i,m',j] = ⟨g_i^m, g_j^m'⟩``.

    ``gram`` is ``(M, N, M, N)`` when ``cross_probe`` else the probe-diagonal blocks ``(M, N, N)``;
    float64. ``scale`` turns probe sums into the trace NTK averaged over outputs (METRICS §1):
    ``1/(M d)`` for Gaussian probes, ``1/d`` for the exact basis, ``1/M`` for explicit probes.
    """

    gram: np.ndarray
    cross_probe: bool
    probe_kind: Literal["gaussian", "exact", "explicit"]
    n_probes: int
    n_outputs: int
    n_params: int
    method: Literal["exact", "sketch"]
    sketch_dim: int | None
    seed: int
    outputs: np.ndarray  # (N, d) f(x_i), float64
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        if self.probe_kind == "gaussian":
            return 1.0 / (self.n_probes * self.n_outputs)
        if self.probe_kind == "exact":
            return 1.0 / self.n_outputs
        return 1.0 / self.n_probes

    def ntk(self) -> np.ndarray:
        """Θ̂ (N, N) float64: ``scale · Σ_m ⟨g_i^m, g_j^m⟩``."""
        total = np.einsum("aiaj->ij", self.gram) if self.cross_probe else self.gram.sum(axis=0)
        return np.asarray(total) * self.scale

    def agop_gram(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(N M, N M) Gram whose spectrum is the non-zero AGOP spectrum (METRICS §4).

        ``D^{1/2} (G · scale) D^{1/2}`` with ``D = diag(weights)`` repeated over the probes (row ``m N + i``
        has weight ``weights[i]``). ``weights`` (N,) defaults to ``1/N`` each (N samples, all distinct); over
        the U distinct inputs of a sample of N, ``n_u / N``.
        """
        if not self.cross_probe:
            raise ValueError(
                "the AGOP spectrum needs cross-probe products: call probe_gram(cross_probe=True)"
            )
        m, n = self.n_probes, self.gram.shape[1]
        w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must be ({n},), got {w.shape}")
        return weighted_probe_gram(self.gram.reshape(m * n, m * n) * self.scale, w, m)


def weighted_probe_gram(gram: np.ndarray, weights: np.ndarray, n_probes: int) -> np.ndarray:
    """``D^{1/2} G D^{1/2}`` of a probe-major ``(M U, M U)`` Gram, ``D = diag(weights)`` repeated over the M
    probes (row ``m U + u`` has weight ``weights[u]``): the AGOP Gram of METRICS §4 with multiplicities."""
    root = np.sqrt(np.tile(np.asarray(weights, dtype=np.float64), n_probes))
    return gram * root[:, None] * root[None, :]


def make_probes(
    probes: Probes, d: int, seed: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> tuple[torch.Tensor, str]:
    """Probe matrix U (M, d) on ``device`` (default: the CPU) and its kind; Gaussian probes come from ``seed``
    alone, drawn on the CPU in float64 whatever the device, so every device gets the same probes."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(probes, torch.Tensor):
        u = probes.reshape(-1, d).to(dtype=dtype, device=device)
        return u, "explicit"
    if probes == "exact":
        return torch.eye(d, dtype=dtype, device=device), "exact"
    if not isinstance(probes, int) or probes < 1:
        raise InvalidSettings(f"probes must be a positive integer or 'exact', got {probes!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(probes, d, generator=gen, dtype=torch.float64, device="cpu")
    return u.to(dtype=dtype, device=device), "gaussian"


@contextlib.contextmanager
def _prepared(model: nn.Module, selected: set[str]) -> Iterator[None]:
    """Eval mode, no in-place activations, gradients only for θ; everything restored afterwards."""
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    inplace = [m for m in model.modules() if isinstance(getattr(m, "inplace", None), bool) and m.inplace]
    model.eval()
    for m in inplace:
        m.inplace = False  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
    try:
        yield
    finally:
        model.train(was_training)
        for m in inplace:
            m.inplace = True  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


class _Recorder:
    """Forward hooks that record each call of a hooked layer and, per probe, its output gradient."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.calls: dict[str, list[Call]] = {}
        self.probe = 0
        self.active = True  # off while rules and the per-sample loop re-run layers
        self._handles = [
            mod.register_forward_hook(self._hook(name), with_kwargs=True) for name, mod in modules.items()
        ]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if not self.active or not isinstance(out, torch.Tensor) or not out.requires_grad:
                return
            call = Call(
                args=tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                kwargs={k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
                out_shape=tuple(out.shape),
                out_dtype=out.dtype,
                out_device=out.device,
            )
            self.calls.setdefault(name, []).append(call)

            def grad_hook(g: torch.Tensor) -> None:
                while len(call.gy) <= self.probe:
                    call.gy.append(None)
                call.gy[self.probe] = g.detach()

            out.register_hook(grad_hook)  # type: ignore[no-untyped-call]  # torch: untyped

        return hook

    def reset(self) -> None:
        self.calls = {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _owned_params(model: nn.Module, selected: set[str]) -> dict[str, tuple[nn.Module, list[str]]]:
    """Module name -> (module, names of its own parameters that are in θ)."""
    owned: dict[str, tuple[nn.Module, list[str]]] = {}
    for mod_name, module in model.named_modules():
        names = [
            n
            for n, _ in module.named_parameters(recurse=False)
            if (f"{mod_name}.{n}" if mod_name else n) in selected
        ]
        if names:
            owned[mod_name] = (module, names)
    return owned


def _qualified(mod_name: str, param: str) -> str:
    return f"{mod_name}.{param}" if mod_name else param


def probe_gram(
    model: nn.Module,
    inputs: Inputs,
    config: KernelConfig | None = None,
    *,
    cross_probe: bool = False,
    progress: ProgressFn | None = None,
    stage: str = "kernel",
    **options: Any,
) -> ProbeGram:
    """Gram of per-(probe, sample) parameter gradients ``g_i^m = ∂(u_m · f(x_i))/∂θ``.

    Args:
        model: maps a batch to ``(B, d)``; run in eval mode (restored afterwards).
        inputs: a batch-first tensor or a mapping of them (``input_ids``, ``attention_mask``, ...).
        config: the kernel options (``KernelConfig``); ``options``, its field names as keywords, replace them.
        probes: M Gaussian probes ``u_m ~ N(0, I_d)`` drawn from ``seed``, ``"exact"`` for the d basis
            outputs, or an explicit ``(M, d)`` tensor.
        method: ``exact`` (per-layer exact products), ``sketch`` (CountSketch of width
            ``sketch_dim``), or ``auto`` (exact when its stored representations fit
            ``memory_budget_gb``, else sketch; the choice is recorded in ``info``).
        params: names of the parameters in θ (default: all).
        cross_probe: also form the products between different probes (needed for the AGOP spectrum).
        gradients: how per-sample gradients are formed after the checked first chunk: ``rules`` (hooks and
            per-layer rules on batched passes), ``loop`` (one forward and M backward passes per sample), or
            ``auto``: ``loop`` on a CPU when every layer's per-sample gradient is materialised anyway (no
            ghost or table form, e.g. conv nets), where batch-1 passes run faster per sample; else ``rules``.
            The choice is recorded in ``info["gradients"]``; the Gram is the same up to float rounding.

    Memory: exact mode keeps each layer's per-sample representation for all N (factored layers
    cost ``tokens × width``, materialised ones ``M × P_L``) and refuses to exceed
    ``memory_budget_gb``; sketch mode keeps ``M × N × k`` floats plus one chunk. On a GPU the budget is
    capped by the device's free memory; running out of memory retries once at half the chunk, then raises
    ``DeviceOutOfMemory`` saying about how much was needed and how much is free (``info`` records both).

    Numerics: the passes run with full float32 precision (no TF32, no reduced-precision reductions) and
    deterministic algorithms where torch has them, and on a GPU transformers models run eager attention
    (``EAGER_ATTENTION_ON``); the caller's settings and the model's attention implementation are restored
    afterwards (``phasecore.kernels.device``).
    """
    started = time.perf_counter()
    config = KernelConfig.build(config, options)
    params = config.params
    n = batch_size(inputs)
    if n < 1:
        raise InvalidSettings("probe_gram needs at least one sample")
    all_names = [name for name, _ in model.named_parameters()]
    selected = set(all_names if params is None else params)
    unknown = selected - set(all_names)
    if unknown:
        raise InvalidSettings(f"unknown parameters in params: {sorted(unknown)[:5]}")
    dtype = next(model.parameters()).dtype
    owned = _owned_params(model, selected)
    n_params = sum(p.numel() for name, p in model.named_parameters() if name in selected)
    param_by_name = dict(model.named_parameters())

    device = next(model.parameters()).device
    budget_gb, budget_info = memory_budget(device, config.memory_budget_gb)
    notes: dict[str, Any] = dict(budget_info)
    attention = eager_attention(model, notes) if device.type in EAGER_ATTENTION_ON else contextlib.nullcontext()
    with exact_numerics(), attention, _prepared(model, selected):
        attempt_chunk = config.chunk_size
        for attempt in (1, 2):
            fitted: dict[str, int] = {}
            recorder = _Recorder({name: mod for name, (mod, _) in owned.items()})
            failure: BaseException | None = None
            try:
                result = _run(
                    model,
                    inputs,
                    n,
                    recorder,
                    owned,
                    param_by_name,
                    replace(config, chunk_size=attempt_chunk, memory_budget_gb=budget_gb),
                    cross_probe,
                    progress,
                    stage,
                    dtype,
                    n_params,
                    started,
                    fitted,
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failure = exc
            finally:
                recorder.close()
            if failure is None:
                result.info.update(notes)
                return result
            used = fitted.get("chunk_size", attempt_chunk)
            needed, message = needed_bytes(failure, device), f"{type(failure).__name__}: {failure}"
            failure = None  # the traceback holds the chunk's tensors: let them go before retrying
            release(device)
            if attempt == 1 and used > 1:
                log.warning("out of memory at a chunk of %d samples on %s; retrying at %d", used, device, used // 2)
                notes["out_of_memory_retry"] = {"chunk_size": used, "retried_at": used // 2}
                attempt_chunk = used // 2
                for name, p in model.named_parameters():  # the failed run may have left light-mode flags
                    p.requires_grad_(name in selected)
                continue
            raise DeviceOutOfMemory(_oom_message(device, stage, used, needed, notes, message))
    raise AssertionError("unreachable")


def _oom_message(device: torch.device, stage: str, chunk: int, needed: int, notes: dict[str, Any], cause: str) -> str:
    free = free_bytes(device)
    have = f"{free[0] / 2**30:.1f} GiB free of {free[1] / 2**30:.1f} GiB" if free else "an unknown amount free"
    retry = notes.get("out_of_memory_retry")
    tried = f"at a chunk of {retry['chunk_size']} samples and again at {chunk}" if retry else f"at a chunk of {chunk}"
    size = f"about {needed / 2**30:.1f} GiB" if needed else "more memory than it has"
    return (
        f"the {stage} stage ran out of memory on {device} {tried}: it needs {size}, the device has {have}; "
        "use method='sketch', fewer probes, a smaller N or chunk_size, restrict params, or a device with "
        f"more memory ({cause[:300]})"
    )


def _run(
    model: nn.Module,
    inputs: Inputs,
    n: int,
    recorder: _Recorder,
    owned: dict[str, tuple[nn.Module, list[str]]],
    param_by_name: dict[str, nn.Parameter],
    config: KernelConfig,
    cross_probe: bool,
    progress: ProgressFn | None,
    stage: str,
    dtype: torch.dtype,
    n_params: int,
    started: float,
    fitted: dict[str, int] | None = None,
) -> ProbeGram:
    """One attempt of ``probe_gram`` at ``config.chunk_size``, within ``config.memory_budget_gb`` (already capped
    by the device)."""
    probes, method, sketch_dim, seed = config.probes, config.method, config.sketch_dim, config.seed
    chunk_size, memory_budget_gb, gradients = config.chunk_size, config.memory_budget_gb, config.gradients
    if gradients not in ("auto", "rules", "loop"):
        raise InvalidSettings(f"gradients must be 'auto', 'rules' or 'loop', got {gradients!r}")
    u: torch.Tensor | None = None
    kind = "gaussian"
    sink: ExactSink | SketchSink | None = None
    resolved: Literal["exact", "sketch"] = "sketch" if method == "sketch" else "exact"
    fallback: list[str] = []  # parameters handled by the per-sample loop
    rules_used: dict[str, str] = {}
    outputs: list[torch.Tensor] = []
    budget = memory_budget_gb * 2**30
    theta = [p for name, p in param_by_name.items() if p.requires_grad]
    theta_names = [name for name, p in param_by_name.items() if p.requires_grad]

    light = False  # after the checked first chunk: backward passes skip the weight gradients
    loop_names: list[str] = []  # after the first chunk, when the per-sample loop takes over every parameter
    expected_modules: set[str] = set()
    chunk_size = _fit_chunk(model, inputs, recorder, theta, probes, seed, chunk_size, memory_budget_gb)
    if fitted is not None:
        fitted["chunk_size"] = chunk_size

    for start in range(0, n, chunk_size):
        rows = min(chunk_size, n - start)
        chunk = slice_inputs(inputs, slice(start, start + rows))
        if loop_names:  # per-sample passes for every parameter: no hooks, no rules
            assert u is not None, "loop_names is set after the first chunk, which draws the probes"
            reps, out = _per_sample_loop(model, chunk, rows, u, [param_by_name[k] for k in loop_names], loop_names)
            outputs.append(out.to(torch.float64).cpu())
        else:
            while True:
                out, grads_per_probe = _forward_backward(model, chunk, recorder, theta, probes, u, seed, light)
                if not light or _fired(recorder) >= expected_modules:
                    break
                # a layer's hook did not fire without weight gradients (a branch fed by parameters alone):
                # back to full backward passes for the rest of the run
                light = False
                _set_trainable(param_by_name, set(theta_names))
            if out.dim() != 2:
                raise InvalidSettings(f"the model must map a batch to (B, d); got output shape {tuple(out.shape)}")
            if u is None:
                u, kind = make_probes(probes, out.shape[1], seed, out.dtype, out.device)
                if sink is None:
                    sink = _make_sink(resolved, n, u.shape[0], sketch_dim, seed, cross_probe)
            outputs.append(out.detach().to(torch.float64).cpu())
            n_probes = u.shape[0]
            batch_grads = grads_per_probe
            recorder.active = False
            reps = _apply_rules(recorder, owned, n_probes, rows, rules_used, fallback)
            if start == 0:
                used = [i for i in range(len(theta)) if any(g[i] is not None for g in batch_grads)]
                n_params = sum(theta[i].numel() for i in used)
                first = _single_sample_grads(model, chunk, u, theta)
                _verify(reps, batch_grads, first, theta_names, param_by_name, fallback, n_probes, dtype)
                reps = {k: v for k, v in reps.items() if k not in fallback}
            if fallback:
                reps.update(
                    _per_sample_loop(model, chunk, rows, u, [param_by_name[k] for k in fallback], fallback)[0]
                )
            recorder.active = True
            if start == 0:
                expected_modules = _fired(recorder)
                tables = {
                    f"{name}.weight" if name else "weight"
                    for name, (module, _) in owned.items()
                    if isinstance(module, nn.Embedding)
                }
                _set_trainable(param_by_name, (tables | set(fallback)) & set(theta_names))
                light = True
        if start == 0 and _prefer_loop(gradients, reps, theta, n > rows):
            loop_names = list(reps)  # the groups the sink received for chunk 1, so every chunk has the same
            _set_trainable(param_by_name, set(loop_names))
            recorder.active = False
        if start == 0 and method == "auto":
            estimate = sum(r.nbytes() for r in reps.values()) * math.ceil(n / rows)
            if estimate > budget:
                resolved = "sketch"
                sink = _make_sink(resolved, n, n_probes, sketch_dim, seed, cross_probe)
        assert sink is not None
        for key, rep in reps.items():
            sink.add(key, start, rows, rep)
        if resolved == "exact" and sink.nbytes > budget:
            raise InvalidSettings(
                f"the exact Gram would keep more than {memory_budget_gb:g} GB of per-sample gradients "
                f"(already {sink.nbytes / 2**30:.1f} GB after {start + rows}/{n} samples); use "
                "method='sketch', fewer probes, a smaller N, or restrict params"
            )
        if progress:
            progress(stage, 0.9 * (start + rows) / n)
    assert sink is not None and u is not None
    gram = sink.finish()
    if progress:
        progress(stage, 1.0)
    return ProbeGram(
        gram=gram.numpy(),
        cross_probe=cross_probe,
        probe_kind=kind,  # type: ignore[arg-type]  # make_probes names its kind as a plain str
        n_probes=u.shape[0],
        n_outputs=u.shape[1],
        n_params=n_params,
        method=resolved,
        sketch_dim=sketch_dim if resolved == "sketch" else None,
        seed=seed,
        outputs=torch.cat(outputs).numpy(),
        info={
            "seconds": time.perf_counter() - started,
            "chunk_size": chunk_size,  # after fitting to the memory budget
            "per_sample_loop_params": sorted(fallback),
            "gradients": "loop" if loop_names else "rules",
            "rules": _rule_counts(rules_used),
            "stored_bytes": int(sink.nbytes),
        },
    )


def _forward_backward(
    model: nn.Module,
    chunk: Inputs,
    recorder: _Recorder,
    theta: list[nn.Parameter],
    probes: Probes,
    u: torch.Tensor | None,
    seed: int,
    light: bool,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor | None, ...]]]:
    """One forward pass and one backward pass per probe; the hooks record inputs and output gradients.

    Full passes differentiate θ (their batched gradients check the rules). Light passes differentiate only
    the input (pixels) and the parameters that still require gradients (embedding tables, loop parameters):
    the hooks see the same output gradients, but no weight gradient is computed.
    """
    recorder.reset()
    recorder.probe = 0
    if light and isinstance(chunk, torch.Tensor) and chunk.is_floating_point():
        chunk = chunk.detach().requires_grad_(True)
    out = call_encoder(model, chunk)
    if u is None:
        u, _ = make_probes(probes, out.shape[1], seed, out.dtype, out.device)
    targets: list[torch.Tensor]
    if light:
        targets = [p for p in theta if p.requires_grad]
        if isinstance(chunk, torch.Tensor) and chunk.requires_grad:
            targets.append(chunk)
    else:
        targets = list(theta)
    # torch types autograd.grad as tuple[Tensor, ...]; with allow_unused=True an unused target's entry is None
    grads: list[tuple[torch.Tensor | None, ...]] = []
    for m in range(u.shape[0]):
        recorder.probe = m
        scalar = (out * u[m]).sum()
        if not targets:
            break
        grads.append(torch.autograd.grad(scalar, targets, retain_graph=m < u.shape[0] - 1, allow_unused=True))
    return out, grads


def _fit_chunk(
    model: nn.Module,
    inputs: Inputs,
    recorder: _Recorder,
    theta: list[nn.Parameter],
    probes: Probes,
    seed: int,
    chunk_size: int,
    memory_budget_gb: float,
) -> int:
    """The largest chunk ≤ ``chunk_size`` whose hook records (layer inputs + M output gradients, about
    half of the peak with the autograd graph) stay within a quarter of the memory budget, measured on
    two samples. High-resolution images with several probes need small chunks; short captions do not."""
    n = batch_size(inputs)
    if chunk_size <= 2 or n <= 2:
        return chunk_size
    _forward_backward(model, slice_inputs(inputs, slice(0, 2)), recorder, theta, probes, None, seed, False)
    per_sample = _recorded_bytes(recorder) / 2
    recorder.reset()
    fitted = int(memory_budget_gb * 2**30 / 4 / max(per_sample, 1.0))
    return max(1, min(chunk_size, fitted))


def _recorded_bytes(recorder: _Recorder) -> int:
    total = 0
    for calls in recorder.calls.values():
        for call in calls:
            tensors = [a for a in call.args if isinstance(a, torch.Tensor)]
            tensors += [g for g in call.gy if g is not None]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _fired(recorder: _Recorder) -> set[str]:
    """Layers whose output gradient reached a hook in the last chunk."""
    return {
        name for name, calls in recorder.calls.items() if any(g is not None for call in calls for g in call.gy)
    }


def _set_trainable(param_by_name: dict[str, nn.Parameter], names: set[str]) -> None:
    for name, p in param_by_name.items():
        p.requires_grad_(name in names)


def _make_sink(
    method: str, n: int, n_probes: int, sketch_dim: int, seed: int, cross_probe: bool
) -> ExactSink | SketchSink:
    if method == "sketch":
        return SketchSink(n, n_probes, sketch_dim=sketch_dim, seed=seed, cross_probe=cross_probe)
    return ExactSink(n, n_probes, cross_probe=cross_probe)


def _rule_counts(rules_used: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule in rules_used.values():
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def _apply_rules(
    recorder: _Recorder,
    owned: dict[str, tuple[nn.Module, list[str]]],
    n_probes: int,
    rows: int,
    rules_used: dict[str, str],
    fallback: list[str],
) -> dict[str, Dense | Factored]:
    reps: dict[str, Dense | Factored] = {}
    for mod_name, (module, names) in owned.items():
        qualified = [_qualified(mod_name, p) for p in names]
        if all(q in fallback for q in qualified):
            continue
        calls = recorder.calls.get(mod_name)
        if not calls:
            continue  # never called, or no gradient path: the check on chunk 1 decides
        rule = rule_for(module)
        try:
            out = rule(module, calls, n_probes, rows)
        except Exception as exc:  # a layer the rule cannot vectorise: exact loop instead
            log.info("rule %s failed on %s (%r); using the per-sample loop", rule.__name__, mod_name, exc)
            fallback.extend(q for q in qualified if q not in fallback)
            continue
        rules_used[mod_name] = rule.__name__
        for p in names:
            if p in out and _qualified(mod_name, p) not in fallback:
                reps[_qualified(mod_name, p)] = out[p]
    return reps


def _single_sample_grads(
    model: nn.Module, chunk: Inputs, u: torch.Tensor, theta: list[nn.Parameter]
) -> list[tuple[torch.Tensor | None, ...]]:
    """Per-probe gradients of sample 0 alone: the reference that checks each rule's attribution."""
    out = call_encoder(model, slice_inputs(chunk, slice(0, 1)))
    return [
        torch.autograd.grad((out * u[m]).sum(), theta, retain_graph=m < u.shape[0] - 1, allow_unused=True)
        for m in range(u.shape[0])
    ]


def _verify(
    reps: dict[str, Dense | Factored],
    batch_grads: list[tuple[torch.Tensor | None, ...]],
    first_grads: list[tuple[torch.Tensor | None, ...]],
    theta_names: list[str],
    param_by_name: dict[str, nn.Parameter],
    fallback: list[str],
    n_probes: int,
    dtype: torch.dtype,
) -> None:
    """Check every rule on the first chunk, else the exact loop takes over its parameters.

    Σ_i g_i^m must equal the batched gradient of probe m (nothing missed), and g_0^m must equal
    the gradient of sample 0 run alone (positions attributed to the right sample; a layer that sees
    sequence-first tensors fails here).
    """
    rtol = 1e-9 if dtype == torch.float64 else 1e-3
    # gradients that are zero in exact arithmetic (a key bias under softmax) are rounding noise:
    # compare against the largest gradient entry of the whole model, per probe
    overall = max((float(g.abs().max()) for gs in batch_grads for g in gs if g is not None), default=0.0)
    for idx, name in enumerate(theta_names):
        if name in fallback:
            continue
        zero = torch.zeros_like(param_by_name[name])
        expected_sum, expected_first = (
            torch.stack([zero if (gi := g[idx]) is None else gi for g in grads]).reshape(n_probes, -1)
            for grads in (batch_grads, first_grads)
        )
        rep = reps.get(name)
        if rep is None:
            if expected_sum.abs().max() > 0:
                fallback.append(name)
            continue
        for got, expected in ((rep.batch_sum(), expected_sum), (rep.sample(0), expected_first)):
            if got.numel() != expected.numel():  # a rule that misread the layout
                fallback.append(name)
                break
            got = got.reshape(n_probes, -1).to(expected.dtype)
            scale = max(float(expected.abs().max()), float(got.abs().max()))
            if float((got - expected).abs().max()) > rtol * scale * 10 + rtol * overall * 1e-3:
                log.info("per-sample rule for %s does not reproduce its gradient; using the loop", name)
                fallback.append(name)
                break


def _per_sample_loop(
    model: nn.Module,
    chunk: Inputs,
    rows: int,
    u: torch.Tensor,
    params: list[nn.Parameter],
    names: list[str],
) -> tuple[dict[str, Dense | Factored], torch.Tensor]:
    """Exact per-sample gradients by one forward and M backward passes per sample (general; on a CPU also
    the fastest way for models whose per-sample gradients are all materialised). Returns the reps and the
    outputs ``(rows, d)``."""
    grads = [p.new_zeros(u.shape[0], rows, p.numel()) for p in params]
    outputs = []
    for i in range(rows):
        out = call_encoder(model, slice_inputs(chunk, slice(i, i + 1)))
        outputs.append(out.detach())
        for m in range(u.shape[0]):
            gs = torch.autograd.grad(
                (out * u[m]).sum(), params, retain_graph=m < u.shape[0] - 1, allow_unused=True
            )
            for k, g in enumerate(gs):
                if g is not None:
                    grads[k][m, i] = g.reshape(-1)
    return {name: Dense(g) for name, g in zip(names, grads, strict=True)}, torch.cat(outputs)


def _prefer_loop(
    gradients: Gradients, reps: dict[str, Dense | Factored], theta: list[nn.Parameter], more: bool
) -> bool:
    """After the first chunk: hand every parameter to the per-sample loop? ``auto`` says yes on a CPU when
    no layer uses a ghost or table form (every rep is materialised: conv nets, ViTs over many tokens). There,
    batching buys nothing but memory traffic: a batch-1 forward + backward of EfficientNet-Lite0 at 224 px
    costs 63 ms/sample against 114 ms/sample at batch 32 on a 2-core VM, and the loop needs no hooks."""
    if gradients == "rules" or not more or not reps:
        return False
    if gradients == "loop":
        return True
    on_cpu = all(p.device.type == "cpu" for p in theta)
    return on_cpu and all(isinstance(r, Dense) for r in reps.values())


def ntk_gram(
    model: nn.Module,
    inputs: Inputs,
    config: KernelConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    **options: Any,
) -> np.ndarray:
    """Empirical trace NTK averaged over outputs, ``Θ̂ (N, N) float64`` (METRICS §1).

    ``Θ_ij = (1/d) Σ_c ⟨∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ⟩``, exactly with ``probes="exact"``, or estimated
    with M Gaussian probes as ``Θ̂_ij = (1/(M d)) Σ_m ⟨g_i^m, g_j^m⟩``. See ``probe_gram`` for the
    arguments; ``method="sketch"`` replaces inner products by CountSketch ones (width ``sketch_dim``).
    """
    return probe_gram(model, inputs, config, progress=progress, **options).ntk()
