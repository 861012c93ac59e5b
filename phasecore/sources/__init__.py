"""Model sources: a reference string in, a ready encoder (pooled ``(B, d)`` embeddings) out.

``SOURCE_LOADERS`` maps each source name of a ``ModelRef`` to one loader
``(ref, *, model_root, device) -> Encoder``:

- ``timm:<name>[@tag]``: image models from the timm registry (``?weights=random`` for random init)
- ``hf:<org/name>[@revision]``: Hugging Face text models, never with remote code
- ``file:<path>``: a transformers or timm folder, or a weights file with ``?arch=``, under the model root
- ``pkg:<name>``: models shipped in pip packages (efficientnet-lite0|1|2, all-minilm-l6-v2)
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import torch

from phasecore.errors import InvalidSettings, PhasescreenError, SourceNotAllowed, UnsupportedModel
from phasecore.paths import default_model_root
from phasecore.settings import DEVICE_SPEC
from phasecore.sources.base import Encoder, ModelIdentity, ModelRef
from phasecore.sources.encoders import TextEncoder, VisionEncoder
from phasecore.sources.file_source import load_file
from phasecore.sources.hf_source import load_hf
from phasecore.sources.pkg_source import PACKAGES, load_pkg, package_installed
from phasecore.sources.timm_source import load_timm


class Loader(Protocol):
    """One source: build the encoder of ``ref``, or raise a PhasescreenError."""

    def __call__(self, ref: ModelRef, *, model_root: Path, device: str | torch.device) -> Encoder: ...


SOURCE_LOADERS: dict[str, Loader] = {"timm": load_timm, "hf": load_hf, "file": load_file, "pkg": load_pkg}

__all__ = [
    "SOURCE_LOADERS",
    "Encoder",
    "ModelIdentity",
    "ModelRef",
    "TextEncoder",
    "VisionEncoder",
    "describe_sources",
    "load_encoder",
    "resolve_device",
]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): the first GPU when torch sees one, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``,
    which must exist. The device changes float rounding only, so profiles are shared across devices (the
    device a profile was computed on is recorded in its metadata)."""
    spec = str(spec or "auto").strip().lower()
    if not re.fullmatch(DEVICE_SPEC, spec):
        raise InvalidSettings(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidSettings(f"device {spec!r} was asked for, but torch sees no CUDA GPU here; use auto or cpu")
    index = int(spec.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise InvalidSettings(f"device {spec!r} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(spec)


def check_allowed(ref: ModelRef, allowed_sources: Collection[str]) -> None:
    """``allowed_sources`` holds source names, or ``hf:<org>`` entries that allow only that hub org."""
    if ref.source in allowed_sources:
        return
    org = ref.name.partition("/")[0] if "/" in ref.name else None
    if ref.source == "hf" and org is not None and f"hf:{org}" in allowed_sources:
        return
    raise SourceNotAllowed(
        f"{ref.canonical()} is not allowed here; "
        f"allowed sources: {', '.join(sorted(allowed_sources)) or 'none'}"
    )


def load_encoder(
    ref: str | ModelRef,
    *,
    model_root: str | Path | None = None,
    allowed_sources: Collection[str] | None = None,
    device: str | torch.device | None = "cpu",
    pooling: str | None = None,
) -> Encoder:
    """Load the encoder named by ``ref``, in eval mode on ``device`` (``auto``, ``cpu``, ``cuda[:N]`` or a
    ``torch.device``; see ``resolve_device``), with its ``identity`` set.

    ``model_root`` is where ``file:`` paths live (default ``$PHASESCREEN_MODEL_ROOT`` or
    ``~/.cache/phasescreen/models``); ``allowed_sources`` restricts sources (None: all); ``pooling``
    overrides the reference's pooling for text models. Every failure raises a PhasescreenError whose
    message names what was wrong and what would work; nothing is returned half-loaded.
    """
    parsed = ModelRef.parse(ref, pooling=pooling)
    if allowed_sources is not None:
        check_allowed(parsed, allowed_sources)
    root = Path(model_root).expanduser() if model_root is not None else default_model_root()
    try:
        return SOURCE_LOADERS[parsed.source](parsed, model_root=root, device=resolve_device(device))
    except PhasescreenError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as error:
        # a model the libraries load but cannot run (odd config, unsupported layer, device trouble)
        raise UnsupportedModel(
            f"{parsed.canonical()} could not be loaded: {type(error).__name__}: {error}"
        ) from error


def describe_sources(allowed_sources: Collection[str] | None = None) -> list[dict[str, Any]]:
    """JSON-able description of every source and its options (for ``GET /v1/sources``)."""
    weights = {
        "weights": ["pretrained", "random"],
        "blend": "t in [0, 1]: (1 - t)·pretrained + t·seeded random init (not with weights=random)",
        "seed": "integer ≥ 0: the random init's seed (with blend or weights=random; default 0)",
    }
    sources: list[dict[str, Any]] = [
        {
            "source": "timm",
            "syntax": "timm:<name>[@<pretrained tag>]",
            "modality": "vision",
            "options": weights,
            "examples": ["timm:resnet18", "timm:vit_small_patch16_224?weights=random", "timm:resnet18?blend=0.25"],
        },
        {
            "source": "hf",
            "syntax": "hf:<org/name>[@<revision>]",
            "modality": "language",
            "options": weights | {"pooling": ["mean", "cls", "last"]},
            "examples": ["hf:bert-base-uncased", "hf:gpt2?pooling=last"],
        },
        {
            "source": "file",
            "syntax": "file:<path under the model root>",
            "modality": "vision or language",
            "options": weights
            | {"pooling": ["mean", "cls", "last"], "arch": "<timm name> for a bare weights file"},
            "examples": ["file:my-bert", "file:vit.safetensors?arch=vit_small_patch16_224"],
        },
        {
            "source": "pkg",
            "syntax": "pkg:<name>",
            "modality": "vision or language",
            "options": {"pooling": ["mean", "cls", "last"], "blend": weights["blend"], "seed": weights["seed"]},
            "examples": ["pkg:efficientnet-lite0", "pkg:all-minilm-l6-v2", "pkg:all-minilm-l6-v2?blend=0.5"],
            "packages": [
                {
                    "name": name,
                    "modality": package.modality,
                    "distribution": package.distribution,
                    "installed": package_installed(package),
                }
                for name, package in PACKAGES.items()
            ],
        },
    ]
    for entry in sources:
        entry["allowed"] = (
            allowed_sources is None
            or entry["source"] in allowed_sources
            or any(a.startswith(f"{entry['source']}:") for a in allowed_sources)
        )
    return sources
