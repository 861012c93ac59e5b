"""Types shared by every model source: references, identities and the encoder wrapper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import torch
from torch import nn

from phasecore.errors import InvalidReference

Modality = Literal["vision", "language"]
Inputs = torch.Tensor | Mapping[str, torch.Tensor]

SOURCES = ("timm", "hf", "file", "pkg")
_OPTION_KEYS = {"weights", "pooling", "arch", "revision"}


@dataclass(frozen=True)
class ModelRef:
    """A model reference: ``source:name[@revision][?key=value&...]``.

    ``timm:resnet18?weights=random``, ``hf:bert-base-uncased@main?pooling=cls``,
    ``file:my-vit?arch=vit_small_patch16_224``, ``pkg:efficientnet-lite0``.

    ``weights`` is ``pretrained`` (default) or ``random``; ``pooling`` is ``mean | cls | last`` for
    language models (None: the source's default); ``arch`` names the timm architecture of a bare
    ``.safetensors`` file.
    """

    source: str
    name: str
    revision: str | None = None
    weights: Literal["pretrained", "random"] = "pretrained"
    pooling: Literal["mean", "cls", "last"] | None = None
    arch: str | None = None

    @classmethod
    def parse(cls, text: str | ModelRef, **overrides: Any) -> ModelRef:
        if isinstance(text, ModelRef):
            return cls(**{**asdict(text), **{k: v for k, v in overrides.items() if v is not None}})
        if not isinstance(text, str) or "\x00" in text or not text.strip():
            raise InvalidReference(f"model reference {text!r} is empty or not text; expected source:name")
        text = text.strip()
        source, sep, rest = text.partition(":")
        if not sep or source not in SOURCES or not rest:
            raise InvalidReference(
                f"model reference {text!r} is not of the form source:name with source one of "
                f"{', '.join(SOURCES)} (e.g. timm:resnet18, hf:bert-base-uncased, pkg:efficientnet-lite0)"
            )
        rest, _, query = rest.partition("?")
        options: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in _OPTION_KEYS:
                raise InvalidReference(
                    f"unknown option {key!r} in model reference {text!r}; "
                    f"known: {', '.join(sorted(_OPTION_KEYS))}"
                )
            options[key] = value
        name, revision = rest, options.pop("revision", None)
        if source in ("hf", "timm") and "@" in rest:
            name, _, revision = rest.partition("@")
        options.update({k: v for k, v in overrides.items() if v is not None})
        ref = cls(source=source, name=name, revision=revision or None, **options)
        ref.validate()
        return ref

    def validate(self) -> None:
        if self.weights not in ("pretrained", "random"):
            raise InvalidReference(f"weights={self.weights!r} is not one of pretrained, random")
        if self.pooling not in (None, "mean", "cls", "last"):
            raise InvalidReference(f"pooling={self.pooling!r} is not one of mean, cls, last")
        if not self.name:
            raise InvalidReference(f"model reference {self.source}: has no name")

    def canonical(self) -> str:
        """The normalised text form; parse(canonical()) == self."""
        text = f"{self.source}:{self.name}"
        if self.revision and self.source in ("hf", "timm"):
            text += f"@{self.revision}"
        opts = [
            f"{k}={v}"
            for k, v in (("weights", self.weights), ("pooling", self.pooling), ("arch", self.arch))
            if v is not None and not (k == "weights" and v == "pretrained")
        ]
        if self.revision and self.source not in ("hf", "timm"):
            opts.append(f"revision={self.revision}")
        return text + ("?" + "&".join(opts) if opts else "")


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
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def batch_size(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def slice_inputs(inputs: Inputs, index: slice | torch.Tensor) -> Inputs:
    """Rows ``index`` of a batch given as a tensor or mapping of tensors."""
    if isinstance(inputs, Mapping):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]
