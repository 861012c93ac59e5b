"""Model sources: a reference string in, a ready encoder (pooled ``(B, d)`` embeddings) out.

``SOURCE_LOADERS`` maps each source name of a ``ModelRef`` to its loader ``(ref, *, model_root, device) ->
Encoder``, taken from the source registry (``references.registry``, which also holds each source's cheap check):

- ``timm:<name>[@tag]``: image models from the timm registry (``?weights=random`` for random init)
- ``hf:<org/name>[@revision]``: Hugging Face text models, never with remote code
- ``file:<path>``: a transformers or timm folder, or a weights file with ``?arch=``, under the model root
- ``pkg:<name>``: models shipped in pip packages (efficientnet-lite0|1|2, all-minilm-l6-v2)
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

import torch

from phasecore.errors import InvalidSettings, PhasescreenError, UnsupportedModel, describe
from phasecore.paths import default_model_root
from phasecore.references.refs import ModelRef, check_allowed
from phasecore.references.registry import REGISTRY, Loader, describe_sources
from phasecore.settings import DEVICE_SPEC
from phasecore.sources.base import Encoder, ModelIdentity
from phasecore.sources.encoders import TextEncoder, VisionEncoder
from phasecore.sources.size import check_params

SOURCE_LOADERS: dict[str, Loader] = {name: source.load() for name, source in REGISTRY.items()}

__all__ = [
    "SOURCE_LOADERS",
    "Encoder",
    "ModelIdentity",
    "ModelRef",
    "TextEncoder",
    "VisionEncoder",
    "check_allowed",
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


def load_encoder(
    ref: str | ModelRef,
    *,
    model_root: str | Path | None = None,
    allowed_sources: Collection[str] | None = None,
    device: str | torch.device | None = "cpu",
    pooling: str | None = None,
    max_params: int | None = None,
) -> Encoder:
    """Load the encoder named by ``ref``, in eval mode on ``device`` (``auto``, ``cpu``, ``cuda[:N]`` or a
    ``torch.device``; see ``resolve_device``), with its ``identity`` set.

    ``model_root`` is where ``file:`` paths live (default ``$PHASESCREEN_MODEL_ROOT`` or
    ``~/.cache/phasescreen/models``); ``allowed_sources`` restricts sources (None: all); ``pooling``
    overrides the reference's pooling for text models; ``max_params`` refuses (UnsupportedModel) a model with
    more parameters, counted before any weight is read or fetched (``phasecore.sources.size``).
    Every failure raises a PhasescreenError whose message names what was wrong and what would work;
    nothing is returned half-loaded.
    """
    parsed = ModelRef.parse(ref, pooling=pooling)
    if allowed_sources is not None:
        check_allowed(parsed, allowed_sources)
    root = Path(model_root).expanduser() if model_root is not None else default_model_root()
    if max_params is not None:
        check_params(parsed, model_root=root, max_params=max_params)
    try:
        return SOURCE_LOADERS[parsed.source](parsed, model_root=root, device=resolve_device(device))
    except PhasescreenError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as error:
        # a model the libraries load but cannot run (odd config, unsupported layer, device trouble)
        raise UnsupportedModel(
            f"{parsed.canonical()} could not be loaded: {describe(error)}"
        ) from error
