"""``timm:<name>[@<pretrained tag>]``: an image model from the timm registry.

Pretrained weights come from the hub or the local hub cache; ``?weights=random`` builds a seeded random
initialisation without fetching anything; ``?blend=t`` mixes the two (``phasecore.sources.weights.apply_blend``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from phasecore.errors import AssetUnavailable, describe
from phasecore.references.refs import RANDOM_INIT_SEED, ModelRef
from phasecore.references.registry import check_timm_name
from phasecore.sources.encoders import VisionEncoder
from phasecore.sources.weights import apply_blend, random_init


def random_timm_model(name: str) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0)``, drawn from the global RNG (callers seed it)."""
    return timm.create_model(name, pretrained=False, num_classes=0)


def create_timm_model(name: str, *, pretrained: bool, seed: int = RANDOM_INIT_SEED) -> nn.Module:
    """``timm.create_model(name, pretrained=..., num_classes=0)``: pooled pre-logits, no classifier; a random
    initialisation is seeded by ``seed``."""
    check_timm_name(name)
    if not pretrained:
        with random_init(seed):
            return random_timm_model(name)
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as error:  # the hub client raises many kinds: offline, missing tag, no weights
        raise AssetUnavailable(
            f"pretrained weights for timm model {name!r} cannot be fetched "
            f"({describe(error)}); "
            f"use timm:{name}?weights=random for a random initialisation, or a local copy as "
            f"file:<weights.safetensors>?arch={name.partition('.')[0]}"
        ) from error


def load_timm(ref: ModelRef, *, model_root: Path, device: str | torch.device) -> VisionEncoder:
    """``timm:<name>[@tag]``; ``@tag`` selects a pretrained tag (``timm:resnet18@a1_in1k``)."""
    name = f"{ref.name}.{ref.revision}" if ref.revision else ref.name
    model = create_timm_model(name, pretrained=ref.weights == "pretrained", seed=ref.init_seed)
    cfg = getattr(model, "pretrained_cfg", {})
    extra = {"hf_hub_id": cfg.get("hf_hub_id")} if ref.weights == "pretrained" else {}
    if ref.blend is not None:
        extra["blend"] = apply_blend(model, ref, lambda: random_timm_model(name))
    return VisionEncoder(
        model,
        ref=ref,
        architecture=cfg.get("architecture") or name.partition(".")[0],
        device=device,
        revision=cfg.get("tag") if ref.weights == "pretrained" else None,
        extra=extra,
    )
