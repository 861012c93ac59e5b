"""The two encoder wrappers: timm image models and Hugging Face text models, pooled to ``(B, d)``.

Each wrapper is a plain ``nn.Module`` whose parameters are exactly those of the wrapped model, so the
kernel engine's hooks on its Linear / Conv / Embedding / norm submodules see every parameter θ.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import timm.data
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from phasecore.errors import UnsupportedModel, describe
from phasecore.sources.base import Encoder, ModelIdentity, ModelRef

Pooling = Literal["mean", "cls", "last"]

#: Max caption length in tokens; captions are short, and this bounds the per-sample cost.
MAX_TOKENS = 64

#: Model types whose hidden state at a token only sees earlier tokens: only the last token has read the
#: whole caption. XLNet is not decoder-only, but its own sequence summary is the last token too.
LAST_TOKEN_MODEL_TYPES = frozenset(
    {
        "gpt2", "gptj", "gpt_neo", "gpt_neox", "gpt_bigcode", "ctrl", "opt", "bloom", "falcon", "llama",
        "mistral", "mixtral", "phi", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "xlnet",
    }
)  # fmt: skip


def default_pooling(config: Any) -> Pooling:
    """``last`` for decoder-only models (METRICS §0), ``mean`` for everything else."""
    if getattr(config, "is_decoder", False) or getattr(config, "model_type", None) in LAST_TOKEN_MODEL_TYPES:
        return "last"
    return "mean"


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token states ``hidden (B, T, d)`` under ``attention_mask (B, T)`` to ``(B, d)``.

    ``mean``: masked mean over real tokens; ``cls``: the first token; ``last``: the last real token
    (found from the mask, so left and right padding both work).
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device, dtype=mask.dtype)
        last = (mask * (positions + 1)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


def _identity(
    model: nn.Module,
    ref: ModelRef,
    *,
    modality: Literal["vision", "language"],
    architecture: str,
    embed_dim: int,
    revision: str | None,
    weights_sha256: str | None,
    extra: dict[str, Any],
    pooling: str | None = None,
) -> ModelIdentity:
    """What an encoder loaded: its reference's parts, its size, and where its weights came from."""
    return ModelIdentity(
        ref=ref.canonical(),
        source=ref.source,
        name=ref.name,
        modality=modality,
        architecture=architecture,
        n_params=_count_parameters(model),
        embed_dim=embed_dim,
        revision=revision,
        weights_sha256=weights_sha256,
        weights="blend" if ref.blend is not None else ref.weights,
        pooling=pooling,
        extra=extra,
    )


class VisionEncoder(Encoder):
    """A timm model built with ``num_classes=0``: images ``(B, 3, H, W)`` -> pooled pre-logits ``(B, d)``."""

    modality = "vision"

    def __init__(
        self,
        model: nn.Module,
        *,
        ref: ModelRef,
        architecture: str,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        weights_sha256: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.to(device).eval()  # BatchNorm running stats, no dropout: samples stay independent (METRICS §0)
        config = timm.data.resolve_data_config({}, model=model)  # type: ignore[no-untyped-call]  # timm: untyped
        self.input_size: tuple[int, int] = tuple(config["input_size"][1:])
        self.mean: tuple[float, ...] = tuple(config["mean"])
        self.std: tuple[float, ...] = tuple(config["std"])
        with torch.no_grad():
            probe = self(torch.zeros(1, 3, *self.input_size, device=self.device))
        if probe.ndim != 2:
            raise UnsupportedModel(
                f"timm model {architecture} returns shape {tuple(probe.shape)} with num_classes=0, not (B, d)"
            )
        self.identity = _identity(
            self.model,
            ref,
            modality="vision",
            architecture=architecture,
            embed_dim=int(probe.shape[1]),
            revision=revision,
            weights_sha256=weights_sha256,
            extra={"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std)}
            | (extra or {}),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 3, H, W)`` normalised -> ``(B, d)``."""
        out: torch.Tensor = self.model(x)
        return out

    def preprocess(self, items: Sequence[np.ndarray]) -> torch.Tensor:
        """Images ``(H, W, 3) float32 in [0, 1]`` (any sizes) -> ``(B, 3, H', W')`` at the model's input size.

        Bilinear resize with antialiasing to timm's data-config input size, then its mean / std.
        """
        batch = []
        for image in items:
            array = np.asarray(image, dtype=np.float32)
            if array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"expected an image (H, W, 3), got shape {array.shape}")
            x = torch.tensor(array).permute(2, 0, 1).unsqueeze(0)  # a copy: inputs may be read-only views
            batch.append(
                F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
            )
        x = torch.cat(batch)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)


# models that derive positions from input_ids and padding: their default ids are per sample already
_PADDING_AWARE_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "camembert",
    "longformer",
    "data2vec-text",
    "xlnet",
    "mpnet",
    "ibert",
    "luke",
}


class TextEncoder(Encoder):
    """A Hugging Face model: ``input_ids``, ``attention_mask`` ``(B, T)`` -> pooled last hidden state
    ``(B, d)`` (METRICS §0)."""

    modality = "language"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        ref: ModelRef,
        pooling: Pooling,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        weights_sha256: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # a key/value cache only serves generation, and holds activations
        self.model = model
        self.to(device).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        try:
            with torch.no_grad():
                probe = self(**self.preprocess(["a photo of a cat"]))
        except (AttributeError, TypeError, ValueError) as error:
            raise UnsupportedModel(
                f"{type(model).__name__} does not map input_ids and attention_mask to a last hidden state "
                f"({describe(error)}); use a text encoder or decoder model"
            ) from error
        self.identity = _identity(
            self.model,
            ref,
            modality="language",
            architecture=type(model).__name__,
            embed_dim=int(probe.shape[1]),
            revision=revision,
            weights_sha256=weights_sha256,
            pooling=pooling,
            extra={"model_type": model.config.model_type, "max_tokens": MAX_TOKENS} | (extra or {}),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``attention_mask`` ``(B, T)`` -> ``(B, d)``."""
        kwargs = {}
        if self._batch_position_ids:
            # the default ids are a (1, T) buffer broadcast over the batch, which hides per-sample
            # gradients of the position table from the NTK engine's hooks; (B, T) ids are equal in value
            kwargs["position_ids"] = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(
                input_ids
            )
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    @property
    def _batch_position_ids(self) -> bool:
        model_type = getattr(getattr(self.model, "config", None), "model_type", "")
        if model_type in _PADDING_AWARE_POSITIONS:
            return False
        return "position_ids" in inspect.signature(self.model.forward).parameters

    def preprocess(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids``, ``attention_mask`` ``(B, T)``: padded to the longest, ≤ 64 tokens."""
        tokens = self.tokenizer(
            list(items), padding="longest", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return {key: tokens[key].to(self.device) for key in ("input_ids", "attention_mask")}
