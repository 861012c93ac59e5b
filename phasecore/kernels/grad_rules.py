"""Per-sample gradient rules, one per layer type (a registry, looked up by exact class).

Each rule turns what the hooks saw for one layer call, its input ``x`` and the gradients ``gy`` of
its output for each probe, into per-sample gradient representations (``reps.Dense`` /
``reps.Factored``) of the layer's own parameters. A layer type without a rule goes through the
generic rule: a per-sample vector-Jacobian product of the layer's own forward under
``torch.func.vmap``. The engine checks every rule against the batched gradient on the first chunk
and sends parameters that fail the check to an exact per-sample loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from phasecore.kernels.reps import Dense, Factored


@dataclass
class Call:
    """One forward call of a layer inside a chunk: its inputs and, per probe, its output gradient."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    gy: list[torch.Tensor | None] = field(default_factory=list)  # one entry per probe
    out_shape: tuple[int, ...] = ()
    out_dtype: torch.dtype = torch.float32
    out_device: torch.device | str = "cpu"

    def stacked_gy(self, n_probes: int) -> torch.Tensor:
        """(M, *out_shape); probes whose gradient never reached this call contribute zeros."""
        zero = torch.zeros(self.out_shape, dtype=self.out_dtype, device=self.out_device)
        rows = []
        for m in range(n_probes):
            gy = self.gy[m] if m < len(self.gy) else None
            rows.append(zero if gy is None else gy)
        return torch.stack(rows)


# A rule: (module, calls, n_probes, chunk) -> {parameter name: rep}; ``choose_ghost`` may pick a form.
Rule = Callable[[nn.Module, list[Call], int, int], dict[str, Dense | Factored]]


def _tokens(t: torch.Tensor, c: int) -> torch.Tensor:
    """(C, ..., w) -> (C, T, w), positions of the sample flattened."""
    return t.reshape(c, -1, t.shape[-1])


def _pack(x: torch.Tensor | None, gy: torch.Tensor, ids: torch.Tensor | None = None) -> Factored:
    """Factored rep from (C, T, a) inputs and (M, C, T, b) gradients, dropping positions whose
    gradient is zero for every probe (padding tokens), so they cost nothing in the Gram."""
    m, c, t, b = gy.shape
    keep = gy.ne(0).any(dim=3).any(dim=0).reshape(-1)  # (C*T,)
    seg = torch.arange(c, device=gy.device).repeat_interleave(t)[keep]
    gy_p = gy.reshape(m, c * t, b)[:, keep]
    x_p = None if x is None else x.reshape(c * t, -1)[keep]
    ids_p = None if ids is None else ids.reshape(-1)[keep]
    return Factored(gy=gy_p, seg=seg, x=x_p, ids=ids_p)


def _linear_like(
    module: nn.Module, calls: list[Call], n_probes: int, c: int, *, transposed: bool
) -> dict[str, Dense | Factored]:
    """y = x Wᵀ + b (nn.Linear) or y = x W + b (transformers' Conv1D, ``transposed``)."""
    xs = [_tokens(call.args[0], c) for call in calls]
    gys = [call.stacked_gy(n_probes) for call in calls]
    gys = [g.reshape(n_probes, c, -1, g.shape[-1]) for g in gys]
    x = torch.cat(xs, dim=1)  # shared layers: the calls are more positions
    gy = torch.cat(gys, dim=2)  # (M, C, T, out)
    t, a, b = x.shape[1], x.shape[2], gy.shape[3]
    reps: dict[str, Dense | Factored] = {}
    if t * t * (a + b) < a * b:  # ghost Gram is cheaper than materialising
        rep = _pack(x, gy)
        reps["weight"] = _SwappedFactored(rep.gy, rep.seg, rep.x) if transposed else rep
    else:
        g = torch.einsum("mctb,cta->mcba", gy, x)
        if transposed:
            g = g.transpose(2, 3)
        reps["weight"] = Dense(g.reshape(n_probes, c, -1))
    if getattr(module, "bias", None) is not None:
        reps["bias"] = Dense(gy.sum(dim=2))
    return reps


class _SwappedFactored(Factored):
    """transformers' Conv1D stores W as (in, out), so g = x ⊗ gy. Gram products do not see the
    order of the two factors; only the materialised forms (``densify``, ``batch_sum``) swap it."""

    def _order(self, g: torch.Tensor) -> torch.Tensor:
        return g.transpose(1, 2)

    def batch_sum(self) -> torch.Tensor:
        m = self.gy.shape[0]
        b, a = self.gy.shape[2], self.x.shape[1] if self.x is not None else 0
        return super().batch_sum().reshape(m, b, a).transpose(1, 2).reshape(m, -1)

    def offset(self, start: int) -> Factored:
        return _SwappedFactored(self.gy, self.seg + start, self.x, self.ids, self.table_rows)


def linear_rule(module: nn.Module, calls: list[Call], n_probes: int, c: int) -> dict[str, Dense | Factored]:
    return _linear_like(module, calls, n_probes, c, transposed=False)


def conv1d_hf_rule(module: nn.Module, calls: list[Call], n_probes: int, c: int) -> dict[str, Dense | Factored]:
    return _linear_like(module, calls, n_probes, c, transposed=True)


def embedding_rule(module: nn.Module, calls: list[Call], n_probes: int, c: int) -> dict[str, Dense | Factored]:
    """Row ``ids_t`` of the table gets ``gy_t``: the Gram's input kernel is ``[ids_t == ids_s]``."""
    assert isinstance(module, nn.Embedding)
    ids = torch.cat([call.args[0].reshape(c, -1) for call in calls], dim=1)
    gy = torch.cat([call.stacked_gy(n_probes).reshape(n_probes, c, -1, module.embedding_dim) for call in calls], dim=2)
    if module.padding_idx is not None:  # nn.Embedding never updates the padding row
        gy = gy * ids.ne(module.padding_idx).unsqueeze(0).unsqueeze(-1).to(gy.dtype)
    rep = _pack(None, gy, ids=ids)
    rep.table_rows = module.num_embeddings
    return {"weight": rep}


def conv2d_rule(module: nn.Module, calls: list[Call], n_probes: int, c: int) -> dict[str, Dense | Factored]:
    """Per-sample weight gradients of a 2-D convolution (any kernel, stride, dilation, groups), one
    kernel offset at a time.

    For offset (a, b) the gradient is ``Σ_l gy_l ⊗ x_{l + (a, b)}``: a batched matmul of the output
    gradient with the input shifted by that offset and strided like the convolution, batched over
    (sample, group). No im2col copy of k² inputs and no vmapped re-run of the layer: the cost is that of
    the batched weight gradient itself. Zero padding is applied explicitly; timm's ``Conv2dSame`` gets the
    TF "SAME" padding it applies in its own forward.
    """
    assert isinstance(module, nn.Conv2d)
    pads = _conv_padding(module)
    if pads is None:
        return generic_rule(module, calls, n_probes, c)
    weight = module.weight
    out_ch, in_g, kh, kw = weight.shape
    groups = module.groups
    out_g = out_ch // groups
    sh, sw = module.stride
    dh, dw = module.dilation
    total_w: torch.Tensor | None = None
    total_b: torch.Tensor | None = None
    for call in calls:
        x = call.args[0]
        if x.dim() != 4 or x.shape[0] != c:
            raise _NotBatchFirst(type(module).__name__)
        top, bottom, left, right = pads(x)
        x = F.pad(x, (left, right, top, bottom))
        gy = call.stacked_gy(n_probes)  # (M, C, O, Ho, Wo)
        ho, wo = gy.shape[-2:]
        # (C·G, M·Og, L): one matmul batch per (sample, group)
        gy_b = gy.reshape(n_probes, c, groups, out_g, ho * wo).permute(1, 2, 0, 3, 4)
        gy_b = gy_b.reshape(c * groups, n_probes * out_g, ho * wo)
        g = gy.new_empty(c * groups, n_probes * out_g, in_g, kh * kw)
        for a in range(kh):
            for b in range(kw):
                xs = x[:, :, a * dh : a * dh + sh * (ho - 1) + 1 : sh, b * dw : b * dw + sw * (wo - 1) + 1 : sw]
                xs = xs.reshape(c * groups, in_g, ho * wo)
                g[..., a * kw + b] = torch.bmm(gy_b, xs.transpose(1, 2))
        # (C, G, M, Og, Ig, k²) -> (M, C, O·Ig·k²), the layout of weight (O, Ig, kh, kw)
        g = g.reshape(c, groups, n_probes, out_g, in_g * kh * kw).permute(2, 0, 1, 3, 4).reshape(n_probes, c, -1)
        total_w = g if total_w is None else total_w + g
        if module.bias is not None:
            gb = gy.sum(dim=(-2, -1))
            total_b = gb if total_b is None else total_b + gb
    assert total_w is not None
    reps: dict[str, Dense | Factored] = {"weight": Dense(total_w)}
    if total_b is not None:
        reps["bias"] = Dense(total_b)
    return reps


def _conv_padding(module: nn.Conv2d) -> Callable[[torch.Tensor], tuple[int, int, int, int]] | None:
    """(top, bottom, left, right) zero padding of a convolution's input, or None when the layer pads
    otherwise (reflect / circular modes, string padding): those go through the generic rule."""
    if module.padding_mode != "zeros":
        return None
    kh, kw = module.kernel_size
    (sh, sw), (dh, dw) = module.stride, module.dilation
    if _is_timm_conv2d_same(module):
        from timm.layers.padding import get_same_padding  # the padding its own forward applies

        def same(x: torch.Tensor) -> tuple[int, int, int, int]:
            ph = get_same_padding(x.shape[-2], kh, sh, dh)
            pw = get_same_padding(x.shape[-1], kw, sw, dw)
            return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2

        return same
    if type(module).forward is not nn.Conv2d.forward:
        return None
    if module.padding == "valid":
        return lambda x: (0, 0, 0, 0)
    if isinstance(module.padding, str):
        return None
    ph, pw = module.padding
    return lambda x: (ph, ph, pw, pw)


def _is_timm_conv2d_same(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "Conv2dSame" and cls.__module__.startswith("timm")


def norm_rule(module: nn.Module, calls: list[Call], n_probes: int, c: int) -> dict[str, Dense | Factored]:
    """Affine norms in eval mode: ``z = x̂ ⊙ w + b`` then, for timm's BatchNormAct2d, ``act(z)``.

    Per sample ``∂/∂w = Σ_positions gz ⊙ x̂`` and ``∂/∂b = Σ_positions gz``, with ``gz`` the gradient at z
    (through the activation, by a local autograd call). x̂ uses running statistics (BatchNorm) or the
    sample's own statistics (LayerNorm), so samples stay independent.
    """
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    tw: torch.Tensor | None = None
    tb: torch.Tensor | None = None
    for call in calls:
        x = call.args[0]
        if x.shape[0] != c:
            raise _NotBatchFirst(type(module).__name__)
        gy = call.stacked_gy(n_probes)
        if isinstance(module, nn.LayerNorm):
            xhat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
            channel_dims = len(module.normalized_shape)
            view = (1,) * (x.dim() - channel_dims) + tuple(module.normalized_shape)
        else:
            assert isinstance(module, nn.modules.batchnorm._BatchNorm)
            if module.running_mean is None or module.running_var is None:
                raise _NotBatchFirst("batch statistics couple samples")
            view = (1, -1) + (1,) * (x.dim() - 2)
            xhat = (x - module.running_mean.view(view)) / torch.sqrt(module.running_var.view(view) + module.eps)
        z = xhat * (weight.view(view) if weight is not None else 1) + (bias.view(view) if bias is not None else 0)
        gz = _through_activation(module, z.detach(), gy)
        reduce_dims = _position_dims(module, x)
        if weight is not None:
            gw = (gz * xhat.unsqueeze(0)).sum(dim=reduce_dims).reshape(n_probes, c, -1)
            tw = gw if tw is None else tw + gw
        if bias is not None:
            gb = gz.sum(dim=reduce_dims).reshape(n_probes, c, -1)
            tb = gb if tb is None else tb + gb
    reps: dict[str, Dense | Factored] = {}
    if tw is not None:
        reps["weight"] = Dense(tw)
    if tb is not None:
        reps["bias"] = Dense(tb)
    return reps


def _position_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Dims of the (M, C, ...) gradient to sum over: every non-channel position of a sample."""
    if isinstance(module, nn.LayerNorm):
        return tuple(range(2, 2 + x.dim() - 1 - len(module.normalized_shape)))
    return tuple(range(3, x.dim() + 1))


def _through_activation(module: nn.Module, z: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Gradients at the affine output z, given those at the module output (M, *z.shape): one forward
    of the activation and its pullback vmapped over the M probes."""
    act, drop = getattr(module, "act", None), getattr(module, "drop", None)
    layers = [layer for layer in (drop, act) if layer is not None and not isinstance(layer, nn.Identity)]
    if not layers:
        return gy
    from torch.func import vjp, vmap

    def forward(t: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            t = layer(t)
        return t

    try:
        pullback = vjp(forward, z)[1]  # torch types vjp's result as (out, fn) or (out, fn, aux): index, not unpack
        pulled: torch.Tensor = vmap(pullback)(gy)[0]
        return pulled
    except RuntimeError:  # an activation torch.func cannot transform (a custom autograd.Function): per probe
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            out = forward(leaf)
            last = gy.shape[0] - 1
            grads = [torch.autograd.grad(out, leaf, gy[m], retain_graph=m < last)[0] for m in range(last + 1)]
        return torch.stack(grads)


def generic_rule(module: nn.Module, calls: list[Call], n_probes: int, c: int) -> dict[str, Dense | Factored]:
    """Per-sample VJP of the layer's own forward, vectorised with ``torch.func.vmap`` over samples and,
    inside each sample's single forward, over the M probes.

    Exact for any layer whose forward treats samples independently with batch-first tensors (norms,
    layer scales, attention blocks with their own parameters, a model root holding position
    embeddings). Child modules' parameters are held fixed: they have rules of their own.
    """
    own = {name: p.detach() for name, p in module.named_parameters(recurse=False)}
    total: dict[str, torch.Tensor] = {}
    for call in calls:
        gy = call.stacked_gy(n_probes).transpose(0, 1)  # (C, M, ...)
        for name, g in _vmapped_vjp(module, call, own, gy, c).items():  # (C, M, *shape)
            g = g.detach().reshape(c, n_probes, -1).transpose(0, 1)
            total[name] = g if name not in total else total[name] + g
    return {name: Dense(g.contiguous()) for name, g in total.items()}


def _vmapped_vjp(
    module: nn.Module, call: Call, own: dict[str, torch.Tensor], gy: torch.Tensor, c: int
) -> dict[str, torch.Tensor]:
    """Per-sample, per-probe ``gy_{i,m} · ∂module(x_i)/∂own`` for one call: gy (C, M, ...) -> (C, M, ...)."""
    from torch.func import functional_call, vjp, vmap

    tensor_pos = [i for i, a in enumerate(call.args) if isinstance(a, torch.Tensor)]
    tensor_kw = [k for k, v in call.kwargs.items() if isinstance(v, torch.Tensor)]
    batched = [call.args[i] for i in tensor_pos] + [call.kwargs[k] for k in tensor_kw]
    if any(t.dim() == 0 or t.shape[0] != c for t in batched):
        raise _NotBatchFirst(type(module).__name__)

    def single(gy_i: torch.Tensor, *sample: torch.Tensor) -> Any:
        args = list(call.args)
        kwargs = dict(call.kwargs)
        for i, value in zip(tensor_pos, sample[: len(tensor_pos)], strict=True):
            args[i] = value.unsqueeze(0)
        for k, value in zip(tensor_kw, sample[len(tensor_pos) :], strict=True):
            kwargs[k] = value.unsqueeze(0)

        def fwd(p: dict[str, torch.Tensor]) -> torch.Tensor:
            out = functional_call(module, p, tuple(args), kwargs, strict=False)
            first: torch.Tensor = out[0] if isinstance(out, tuple) else out
            return first

        pullback = vjp(fwd, own)[1]  # as in _through_activation: (out, fn) without has_aux
        return vmap(lambda g: pullback(g.unsqueeze(0))[0])(gy_i)  # the M probes share one forward

    grads: dict[str, torch.Tensor] = vmap(single)(gy, *batched)
    return grads


class _NotBatchFirst(Exception):
    """The generic rule cannot vectorise this layer (non batch-first inputs)."""


def _exact_forward(cls: type[nn.Module], base: type[nn.Module]) -> bool:
    return cls is base or (issubclass(cls, base) and cls.forward is base.forward)


def rule_for(module: nn.Module) -> Rule:
    """The rule of a layer: a fast rule where its forward is exactly the base layer's, else generic."""
    cls = type(module)
    if _exact_forward(cls, nn.Linear):
        return linear_rule
    if _exact_forward(cls, nn.Embedding):
        return embedding_rule
    if _exact_forward(cls, nn.Conv2d) or _is_timm_conv2d_same(module):
        return conv2d_rule
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers"):
        return conv1d_hf_rule
    if _exact_forward(cls, nn.LayerNorm) or _exact_forward(cls, nn.BatchNorm2d) or _exact_forward(cls, nn.BatchNorm1d):
        return norm_rule
    if cls.__name__ == "BatchNormAct2d" and cls.__module__.startswith("timm"):
        return norm_rule
    return generic_rule
