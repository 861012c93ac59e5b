"""Information plane from matrix-based Rényi α-entropy (METRICS §9, the paper's Figure 3; optional).

Giraldo, Rao & Príncipe (2014): for an N × N positive semi-definite Gram K with positive diagonal, the
normalised ``A_ij = K_ij / (N sqrt(K_ii K_jj))`` has unit trace and ``S_α(A) = log2(Σ_i λ_i(A)^α) / (1 − α)``
(bits). The joint entropy uses the Hadamard product ``A_XT = A_X ∘ A_T / tr(A_X ∘ A_T)``, and
``I(X;T) = S_α(A_X) + S_α(A_T) − S_α(A_XT)``. α = 1.01 approximates Shannon entropy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from phasecore.paper import PAPER_TITLE
from phasecore.sources.base import Inputs, batch_size, call_encoder, slice_inputs

ALPHA = 1.01
INFO_RATIO_THRESHOLD = 3.0


def normalised_gram(K: np.ndarray) -> np.ndarray:
    """``A = K_ij / (N sqrt(K_ii K_jj))``: (N, N) float64 with unit trace. K needs a positive diagonal."""
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"a Gram must be (N, N), got {K.shape}")
    diag = np.diag(K)
    if not np.all(diag > 0) or not np.all(np.isfinite(K)):
        raise ValueError("a Gram for the matrix entropy needs finite entries and a positive diagonal")
    scale = np.sqrt(diag)
    normalised: np.ndarray = K / np.outer(scale, scale) / K.shape[0]
    return normalised


def renyi_entropy(A: np.ndarray, *, alpha: float = ALPHA) -> float:
    """``S_α(A) = log2(Σ λ_i^α) / (1 − α)`` in bits, A (N, N) unit-trace PSD (negative round-off eigenvalues
    are clipped to 0)."""
    if alpha <= 0 or alpha == 1:
        raise ValueError(f"alpha must be > 0 and ≠ 1, got {alpha}")
    eigenvalues = np.clip(np.linalg.eigvalsh(A), 0.0, None)
    return float(math.log2(np.sum(eigenvalues**alpha)) / (1.0 - alpha))


def joint_entropy(A: np.ndarray, B: np.ndarray, *, alpha: float = ALPHA) -> float:
    """``S_α(A ∘ B / tr(A ∘ B))`` of two normalised (N, N) Grams."""
    H = A * B
    return renyi_entropy(H / np.trace(H), alpha=alpha)


def mutual_information(A: np.ndarray, B: np.ndarray, *, alpha: float = ALPHA) -> float:
    """``I = S_α(A) + S_α(B) − S_α(A ∘ B / tr)`` in bits, of two normalised (N, N) Grams."""
    return renyi_entropy(A, alpha=alpha) + renyi_entropy(B, alpha=alpha) - joint_entropy(A, B, alpha=alpha)


def rbf_gram(X: np.ndarray, *, sigma: float | None = None) -> np.ndarray:
    """Gaussian Gram ``exp(−‖x_i − x_j‖² / (2σ²))`` of X (N, ...) flattened per row; σ defaults to the median
    pairwise distance (choice: the median heuristic, scale-free across layers). Returns (N, N) float64."""
    Z = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    sq = np.sum(Z**2, axis=1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * Z @ Z.T, 0.0, None)
    if sigma is None:
        off_diagonal = d2[~np.eye(len(Z), dtype=bool)]
        median = float(np.sqrt(np.median(off_diagonal))) if off_diagonal.size else 0.0
        sigma = median if median > 0 else 1.0
    gram: np.ndarray = np.exp(-d2 / (2.0 * sigma**2))
    return gram


def information_plane(
    X_gram: np.ndarray,
    T_grams: Sequence[np.ndarray],
    Y_onehot: np.ndarray,
    *,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """I(X;T) and I(Y;T) per representation T (METRICS §9).

    X_gram: (N, N) Gram of the inputs; T_grams: L Grams (N, N) of the representations, first to last block;
    Y_onehot: (N, C) one-hot labels (their Gram ``Y Yᵀ`` is 1 for pairs of one class). All in bits.

    Returns a dict with keys ``alpha``, ``n``, ``h_x``, ``h_y``, ``i_xt`` (list of L), ``i_yt`` (list of L),
    ``ratio`` (list of ``I(Y;T)/I(X;T)``, None where I(X;T) = 0), ``ratio_last``, ``compression``
    (``(I(X;T_first) − I(X;T_last)) / I(X;T_first)``: positive when the last block has compressed the input,
    None when I(X;T_first) = 0), and ``paper_rule`` ({rule, threshold, predicts_failure, source}: the paper's
    claim that ``ratio_last < 3.0`` predicts failure, not verified by phasescreen).
    """
    if len(T_grams) == 0:
        raise ValueError("information_plane needs at least one representation Gram")
    Y = np.asarray(Y_onehot, dtype=np.float64)
    A_x = normalised_gram(X_gram)
    A_y = normalised_gram(Y @ Y.T)
    if A_y.shape != A_x.shape:
        raise ValueError(f"Y_onehot has {Y.shape[0]} rows for a {A_x.shape} input Gram")
    h_x, h_y = renyi_entropy(A_x, alpha=alpha), renyi_entropy(A_y, alpha=alpha)
    i_xt, i_yt = [], []
    for T in T_grams:
        A_t = normalised_gram(T)
        if A_t.shape != A_x.shape:
            raise ValueError(f"a representation Gram {A_t.shape} does not match the input Gram {A_x.shape}")
        h_t = renyi_entropy(A_t, alpha=alpha)
        i_xt.append(h_x + h_t - joint_entropy(A_x, A_t, alpha=alpha))
        i_yt.append(h_y + h_t - joint_entropy(A_y, A_t, alpha=alpha))
    ratio = [iy / ix if ix > 0 else None for ix, iy in zip(i_xt, i_yt, strict=True)]
    compression = (i_xt[0] - i_xt[-1]) / i_xt[0] if i_xt[0] > 0 else None
    return {
        "alpha": alpha,
        "n": A_x.shape[0],
        "h_x": h_x,
        "h_y": h_y,
        "i_xt": i_xt,
        "i_yt": i_yt,
        "ratio": ratio,
        "ratio_last": ratio[-1],
        "compression": compression,
        "paper_rule": {
            "rule": "I(Y;T)/I(X;T) < 3.0 at the last block predicts failure",
            "threshold": INFO_RATIO_THRESHOLD,
            "predicts_failure": None if ratio[-1] is None else ratio[-1] < INFO_RATIO_THRESHOLD,
            "source": f"paper claim ({PAPER_TITLE}, 144 pairs); not verified by phasescreen",
        },
    }


def model_information_plane(
    model: nn.Module,
    inputs: Inputs,
    labels: np.ndarray,
    blocks: tuple[str, nn.ModuleList | nn.Sequential] | None,
    *,
    chunk_size: int = 32,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """The information plane of one model on its N samples (METRICS §9), in eval mode.

    X: the model's input, as pixels (tensor inputs) or as the bag of token ids (mapping inputs with
    ``input_ids``, padding masked out); T: the output of every block of ``blocks`` (the model's longest block
    list, ``profile.block_list``), pooled over positions (spatial mean, or the masked mean over tokens), then the
    final embedding. Every Gram is Gaussian with the median heuristic (``rbf_gram``). Returns
    ``information_plane``'s dict plus ``representations`` (the names of the T, first to last)."""
    n = batch_size(inputs)
    modules = [] if blocks is None else [(_qualified(blocks[0], i), m) for i, m in enumerate(blocks[1])]
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name, _ in modules}
    mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor):
                pooled[name].append(_pool_positions(out.detach(), mask[0]).double().cpu())

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules]
    was_training = model.training
    model.eval()
    x_rows, final = [], []
    try:
        with torch.no_grad():
            for start in range(0, n, chunk_size):
                chunk = slice_inputs(inputs, slice(start, start + chunk_size))
                mask[0] = chunk.get("attention_mask") if isinstance(chunk, Mapping) else None
                final.append(call_encoder(model, chunk).double().cpu())
                x_rows.append(_input_features(chunk))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    names = [name for name, _ in modules if pooled[name]]
    T = [torch.cat(pooled[name]).numpy() for name in names] + [torch.cat(final).numpy()]
    width = max(r.shape[1] for r in x_rows)
    X = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in x_rows])
    Y = np.eye(int(np.max(labels)) + 1)[np.asarray(labels, dtype=np.int64)]
    result = information_plane(rbf_gram(X), [rbf_gram(t) for t in T], Y, alpha=alpha)
    result["representations"] = names + ["embedding"]
    return result


def _qualified(prefix: str, index: int) -> str:
    return f"{prefix}.{index}" if prefix else str(index)


def _pool_positions(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, ...) block output → (B, width): spatial mean of (B, C, H, W), masked token mean of (B, T, D)."""
    if out.dim() == 4:
        return out.mean(dim=(2, 3))
    if out.dim() == 3:
        if mask is not None and mask.shape == out.shape[:2]:
            weights = mask.to(out.dtype).unsqueeze(-1)
            return (out * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return out.mean(dim=1)
    return out.reshape(out.shape[0], -1)


def _input_features(chunk: Inputs) -> np.ndarray:
    """X of METRICS §9: flattened pixels, or the bag of (unmasked) token ids as counts over the vocabulary."""
    if not isinstance(chunk, Mapping):
        return chunk.detach().double().reshape(chunk.shape[0], -1).cpu().numpy()
    ids = chunk["input_ids"].cpu()
    mask = chunk.get("attention_mask")
    weights = torch.ones_like(ids, dtype=torch.float64) if mask is None else mask.cpu().to(torch.float64)
    counts = torch.zeros(ids.shape[0], int(ids.max()) + 1, dtype=torch.float64)
    counts.scatter_add_(1, ids, weights)
    return counts.numpy()
