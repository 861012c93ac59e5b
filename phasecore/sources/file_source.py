"""``file:<path>``: a model stored under the configured model root.

Three layouts:
- a transformers folder (``config.json`` with a ``model_type``, tokenizer files, weights): a text encoder;
- a timm folder (``config.json`` with an ``architecture``, and ``model.safetensors`` or
  ``pytorch_model.bin``): an image encoder;
- a bare weights file (``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` read with ``weights_only``) with
  ``?arch=<timm name>``: an image encoder.

The path is resolved under the model root and may not leave it. The identity records the sha256 of the
weight files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from phasecore.errors import InvalidReference
from phasecore.paths import resolve_under
from phasecore.sources.base import Encoder, ModelRef
from phasecore.sources.encoders import VisionEncoder
from phasecore.sources.hf_source import build_text_encoder
from phasecore.sources.timm_source import create_timm_model, random_timm_model
from phasecore.sources.weights import apply_blend, load_timm_state_dict, read_state_dict, sha256_files

_TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def _timm_encoder(weights: Path, arch: str, ref: ModelRef, device: str | torch.device) -> VisionEncoder:
    model = create_timm_model(arch, pretrained=False)
    load_timm_state_dict(model, read_state_dict(weights), source=f"file:{ref.name}")
    extra: dict[str, Any] = {"weight_files": [weights.name]}
    if ref.blend is not None:
        extra["blend"] = apply_blend(model, ref, lambda: random_timm_model(arch))
    return VisionEncoder(
        model,
        ref=ref,
        architecture=arch,
        device=device,
        weights_sha256=sha256_files([weights]),
        extra=extra,
    )


def _folder_encoder(folder: Path, ref: ModelRef, device: str | torch.device) -> Encoder:
    config = json.loads((folder / "config.json").read_text())
    if "model_type" in config:
        weights = sorted(p for pattern in _HF_WEIGHT_PATTERNS for p in folder.glob(pattern))
        if not weights and ref.weights == "pretrained":
            raise InvalidReference(
                f"file:{ref.name} has a config.json but no *.safetensors or *.bin weights; "
                "add them, or use ?weights=random"
            )
        return build_text_encoder(
            str(folder),
            ref=ref,
            device=device,
            weights_sha256=sha256_files(weights) if ref.weights == "pretrained" else None,
            extra={"weight_files": [p.name for p in weights]} if ref.weights == "pretrained" else None,
        )
    arch = ref.arch or config.get("architecture")
    timm_weights = next((folder / n for n in _TIMM_WEIGHT_FILES if (folder / n).is_file()), None)
    if not arch or timm_weights is None:
        raise InvalidReference(
            f"file:{ref.name} is neither a transformers folder (config.json with model_type) nor a timm "
            f"folder (config.json with architecture, and one of {', '.join(_TIMM_WEIGHT_FILES)})"
        )
    return _timm_encoder(timm_weights, arch, ref, device)


def load_file(ref: ModelRef, *, model_root: Path, device: str | torch.device) -> Encoder:
    """``file:<path>[?arch=<timm name>]`` under ``model_root``."""
    path = resolve_under(model_root, ref.name, what="model")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidReference(
                f"folder file:{ref.name} has no config.json; save a transformers model with save_pretrained, "
                "or name a weights file with ?arch=<timm name>"
            )
        return _folder_encoder(path, ref, device)
    if not ref.arch:
        raise InvalidReference(
            f"file:{ref.name} is a bare weights file; name its timm architecture, "
            f"e.g. file:{ref.name}?arch=resnet18"
        )
    if ref.weights == "random":
        raise InvalidReference(
            f"file:{ref.name} names weights; for a random init use timm:{ref.arch}?weights=random"
        )
    return _timm_encoder(path, ref.arch, ref, device)
