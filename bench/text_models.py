"""Text models as the benchmarks time them: a transformers backbone mean-pooled to ``(B, d)``, with explicit
``(B, T)`` position ids (the engine's own text encoder passes them the same way, METRICS §0)."""

from __future__ import annotations

import torch
from torch import nn

from phasecore.sources.encoders import pool


class MeanPooled(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return pool(h, attention_mask, "mean")
