"""The zoo's networks: images ``(B, 3, 32, 32)`` or words ``(B, T)`` in, ``(B, EMBED_DIM)`` out.

Built from layers the kernel engine has exact rules for (Conv2d, Linear, Embedding, LayerNorm) plus GroupNorm,
and no BatchNorm: a sample's output never depends on its batch, and a blend toward the initialisation moves every
weight (BatchNorm statistics made EfficientNet blends collapse, docs/evidence.md). The GRU is written out with
two Linear layers so that its recurrent weight is one layer called once per word.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from phasecore.zoo.recipe import EMBED_DIM
from phasecore.zoo.vocab import MAX_WORDS, PAD, vocabulary


class ConvTower(nn.Module):
    """Four 3×3 convolutions (widths w, 2w, 2w, 4w; strides 1, 2, 2, 2), each with GroupNorm and ReLU, a global
    mean pool and a linear head: ``x (B, 3, H, W)`` -> ``(B, EMBED_DIM)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        channels, layers, c_in = (width, 2 * width, 2 * width, 4 * width), [], 3
        for c, stride in zip(channels, (1, 2, 2, 2), strict=True):
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.GroupNorm(_groups(c), c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, EMBED_DIM)
        self.width = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pooled(x))
        return out

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features ``(B, 4w)`` before the head (what a unimodal head reads too)."""
        pooled: torch.Tensor = self.features(x).mean(dim=(2, 3))
        return pooled


def _groups(channels: int) -> int:
    return math.gcd(channels, 4)


class _Attention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = max(1, width // 32)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, w // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // h)
        scores = scores.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, w)
        projected: torch.Tensor = self.o(out)
        return projected


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = _Attention(width)
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        out: torch.Tensor = x + self.down(F.gelu(self.up(self.norm2(x))))
        return out


class TransformerTower(nn.Module):
    """Word and position embeddings, two pre-norm transformer blocks, a final LayerNorm, the masked mean over the
    caption's words and a linear head: ``input_ids``, ``attention_mask (B, T)`` -> ``(B, EMBED_DIM)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(len(vocabulary()), width, padding_idx=PAD)
        self.positions = nn.Embedding(MAX_WORDS, width)
        self.blocks = nn.ModuleList([_Block(width), _Block(width)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, EMBED_DIM)
        self.width = width

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-word states ``(B, T, width)``."""
        # (B, T) position ids, not a broadcast (1, T): the engine's hooks see each sample's rows of the table
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.tokens(input_ids) + self.positions(positions)
        for block in self.blocks:
            x = block(x, attention_mask)
        normed: torch.Tensor = self.norm(x)
        return normed

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return (self.states(input_ids, attention_mask) * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pooled(input_ids, attention_mask))
        return out


class GRUTower(nn.Module):
    """Word embeddings read by a GRU (its state kept over padding), the last state and a linear head:
    ``input_ids``, ``attention_mask (B, T)`` -> ``(B, EMBED_DIM)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(len(vocabulary()), width, padding_idx=PAD)
        self.input_gates = nn.Linear(width, 3 * width)
        self.state_gates = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, EMBED_DIM)
        self.width = width

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-word states ``(B, T, width)`` (a padded word repeats the state before it)."""
        gates_x = self.input_gates(self.tokens(input_ids))
        mask = attention_mask.unsqueeze(-1).to(gates_x.dtype)
        h = gates_x.new_zeros(input_ids.shape[0], self.width)
        out = []
        for t in range(input_ids.shape[1]):
            xr, xz, xn = gates_x[:, t].chunk(3, dim=-1)
            hr, hz, hn = self.state_gates(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            new = (1 - z) * torch.tanh(xn + r * hn) + z * h
            h = mask[:, t] * new + (1 - mask[:, t]) * h
            out.append(h)
        return torch.stack(out, dim=1)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.states(input_ids, attention_mask)[:, -1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pooled(input_ids, attention_mask))
        return out


Tower = ConvTower | TransformerTower | GRUTower


def build_tower(tower: str, width: int, text: str) -> Tower:
    """The untrained network of a tower (drawn from the global RNG: callers seed it)."""
    if tower == "vision":
        return ConvTower(width)
    return TransformerTower(2 * width) if text == "transformer" else GRUTower(2 * width)


def scale_init(model: nn.Module, factor: float) -> None:
    """Multiply every weight matrix and kernel (``ndim ≥ 2``: Linear, Conv2d, Embedding) by ``factor``; biases and
    norm gains stay."""
    if factor == 1.0:
        return
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.mul_(factor)
