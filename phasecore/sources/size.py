"""A model's parameter count, known before any weight file is opened or any download starts.

- ``file:``: the JSON headers of its ``.safetensors`` files (8-byte length, then the header: the sum of the
  shape products; the tensors themselves are never read); a pickled file or a folder without safetensors is
  built on the meta device from its architecture or config;
- ``timm:``: the architecture built on the meta device (no memory, no weights, no hub);
- ``hf:``: the config (a few kB from the local cache or the hub, never the weights) built on the meta device;
- ``pkg:``: the architecture built on the meta device, or the package's known size;
- ``zoo:``: the recipe's tower built on the meta device.

The count is an upper bound of what is loaded (a classifier head the encoder drops is counted).
``None`` where it cannot be known cheaply; the size is then checked after loading (``n_params``).
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

from phasecore.errors import InvalidReference, UnsupportedModel
from phasecore.paths import resolve_under
from phasecore.references.refs import ModelRef
from phasecore.references.registry import PACKAGES

log = logging.getLogger(__name__)

#: a safetensors header larger than this is not one
_MAX_HEADER_BYTES = 100 * 1024 * 1024
#: parameters of offline packages whose architecture is not a timm one
_PACKAGE_PARAMS = {"all-minilm-l6-v2": 22_713_216}


def safetensors_params(path: Path) -> int:
    """The parameter count a ``.safetensors`` file holds, from its header alone."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InvalidReference(f"weights file {path.name!r} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER_BYTES:
            raise InvalidReference(f"weights file {path.name!r} has an implausible safetensors header")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidReference(f"weights file {path.name!r} has no readable safetensors header") from None
    total = 0
    for key, entry in header.items() if isinstance(header, dict) else ():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidReference(f"weights file {path.name!r} has a malformed safetensors header")
        count = 1
        for d in shape:
            count *= d
        total += count
    return total


def _meta_params(build: Any) -> int:
    import torch

    with torch.device("meta"):
        model = build()
    return int(sum(p.numel() for p in model.parameters()))


def timm_params(architecture: str) -> int:
    import timm

    return _meta_params(lambda: timm.create_model(architecture, pretrained=False, num_classes=0))


def transformers_params(config_source: str, revision: str | None = None) -> int | None:
    """Built from the config alone; ``None`` when the config cannot be had (the loader then says why)."""
    try:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(config_source, revision=revision)
        return _meta_params(lambda: AutoModel.from_config(config))  # type: ignore[no-untyped-call]  # untyped
    except Exception:  # no config here, offline, remote code: the loader reports it properly
        return None


def _file_params(ref: ModelRef, model_root: Path) -> int | None:
    path = resolve_under(model_root, ref.name, what="model")
    if path.is_file():
        if path.suffix == ".safetensors":
            return safetensors_params(path)
        return timm_params(ref.arch) if ref.arch else None
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return sum(safetensors_params(p) for p in shards)
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and "model_type" in config:
        return transformers_params(str(path))
    arch = ref.arch or (config.get("architecture") if isinstance(config, dict) else None)
    return timm_params(arch) if isinstance(arch, str) else None


def estimate_params(ref: ModelRef, *, model_root: Path) -> int | None:
    """The parameter count of ``ref`` without reading its weights, or None where unknown cheaply (also when
    the reference is broken: an unknown architecture, a malformed header; the loader then says what is wrong)."""
    try:
        return _estimate(ref, model_root)
    except Exception:
        log.debug("no parameter count of %s before loading", ref.canonical(), exc_info=True)
        return None


def _estimate(ref: ModelRef, model_root: Path) -> int | None:
    if ref.source == "file":
        return _file_params(ref, model_root)
    if ref.source == "timm":
        return timm_params(ref.name)
    if ref.source == "hf":
        return transformers_params(ref.name, ref.revision)
    if ref.source == "zoo":
        from phasecore.zoo.towers import build_tower

        recipe = ref.zoo_recipe
        return _meta_params(lambda: build_tower(recipe.tower, recipe.width, recipe.text))
    if ref.source == "pkg":
        if ref.name in _PACKAGE_PARAMS:
            return _PACKAGE_PARAMS[ref.name]
        package = PACKAGES.get(ref.name)
        return timm_params(package.architecture) if package and package.modality == "vision" else None
    return None


def check_params(ref: ModelRef | str, *, model_root: Path, max_params: int) -> int | None:
    """Raise UnsupportedModel when ``ref`` has more than ``max_params`` parameters, before any weight is read
    or fetched; the estimate (None: unknown until loaded)."""
    ref = ModelRef.parse(ref)
    n_params = estimate_params(ref, model_root=model_root)
    if n_params is not None and n_params > max_params:
        raise UnsupportedModel(
            f"model {ref.canonical()} has {n_params:,} parameters, above this deployment's limit of "
            f"{max_params:,} (PHASESCREEN_MAX_PARAMS); it was refused before its weights were read"
        )
    return n_params
