"""Types shared by every model source: identities and the encoder wrapper (references: ``references.refs``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from phasecore.references.refs import RANDOM_INIT_SEED, SOURCES, ModelRef

Modality = Literal["vision", "language"]
__all__ = ["RANDOM_INIT_SEED", "SOURCES", "Encoder", "Inputs", "Modality", "ModelIdentity", "ModelRef"]

Inputs = torch.Tensor | Mapping[str, torch.Tensor]

@dataclass(frozen=True)
class ModelIdentity:
    """What exactly was loaded: enough to reproduce a result."""

    ref: str  # canonical ModelRef
    source: str
    name: str
    modality: Modality
    architecture: str
    n_params: int
    embed_dim: int
    revision: str | None = None
    weights_sha256: str | None = None  # sha256 of the weights file(s) when loaded from files
    weights: str = "pretrained"
    pooling: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Encoder(nn.Module):
    """A model mapping a batch to pooled embeddings ``(B, d)`` (METRICS §0), with its preprocessing.

    Vision encoders take a float tensor ``(B, 3, H, W)``; language encoders take keyword tensors
    ``input_ids`` and ``attention_mask`` (``(B, T)``). ``preprocess`` turns raw samples into exactly
    that, so ``encoder(**inputs)`` or ``encoder(inputs)`` works (see ``call_encoder``).
    """

    modality: Modality
    identity: ModelIdentity

    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    def preprocess(self, items: Sequence[Any]) -> Inputs:  # pragma: no cover - abstract
        """Images ``(H, W, 3) float32 in [0, 1]`` (vision) or captions ``str`` (language) -> inputs."""
        raise NotImplementedError


def call_encoder(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """Run ``model`` on a batch given as a tensor or a mapping of keyword tensors."""
    out: torch.Tensor = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return out


def batch_size(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def slice_inputs(inputs: Inputs, index: slice | torch.Tensor) -> Inputs:
    """Rows ``index`` of a batch given as a tensor or mapping of tensors."""
    if isinstance(inputs, Mapping):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]
