"""Reading weight files safely, hashing them, and loading state dicts into timm models."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from phasecore.errors import InvalidReference, describe
from phasecore.sources.base import RANDOM_INIT_SEED, ModelRef

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """sha256 of one file, or of the sorted ``name sha256`` lines of several (sharded checkpoints)."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in sorted(paths))
    return hashlib.sha256(lines.encode()).hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a pickle read with ``weights_only=True`` (no code runs).

    A training checkpoint that nests the weights under ``state_dict`` or ``model`` is unwrapped.
    """
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    if path.suffix not in _PICKLE_SUFFIXES:
        raise InvalidReference(
            f"weights file {path.name!r} is neither .safetensors nor one of {', '.join(_PICKLE_SUFFIXES)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refuses anything but tensors and containers
        raise InvalidReference(
            f"weights file {path.name!r} cannot be read as plain tensors ({describe(error)}); "
            "save it with safetensors or torch.save(model.state_dict())"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidReference(f"weights file {path.name!r} does not hold a state dict of tensors")
    return dict(state)


@contextmanager
def random_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Seeded initialisation (``torch.manual_seed(seed)``) that leaves the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def blend_state(
    pretrained: Mapping[str, torch.Tensor], random: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """``(1 − t)·θ_pretrained + t·θ_random`` for every floating-point tensor (parameters and buffers alike,
    BatchNorm running statistics included); integer tensors (``num_batches_tracked``, position ids) stay
    pretrained. Computed as ``torch.lerp``: exactly θ_pretrained at t = 0 and θ_random at t = 1."""
    if set(pretrained) != set(random):
        raise InvalidReference("blend: the random init and the pretrained weights have different tensors")
    out = {}
    for key, value in pretrained.items():
        other = random[key]
        if value.shape != other.shape:
            raise InvalidReference(f"blend: {key} is {tuple(value.shape)} pretrained, {tuple(other.shape)} at init")
        if value.is_floating_point():
            out[key] = torch.lerp(value, other.to(value.dtype), float(t))
        else:
            out[key] = value.clone()
    return out


def apply_blend(model: nn.Module, ref: ModelRef, make_random: Callable[[], nn.Module]) -> dict[str, Any]:
    """Blend ``model`` (pretrained weights loaded) in place with ``make_random()``, built under
    ``random_init(ref.init_seed)``, by ``ref.blend``; returns the record for the identity
    (``{"t", "seed", "buffers"}``). The random twin is built on the CPU, like the pretrained model."""
    assert ref.blend is not None
    with random_init(ref.init_seed):
        twin = make_random()
    state = blend_state(model.state_dict(), twin.state_dict(), float(ref.blend))
    model.load_state_dict(state, strict=True)
    return {"t": float(ref.blend), "seed": ref.init_seed, "buffers": "blended"}


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(f"{n}." for n in ([names] if isinstance(names, str) else names))


def load_timm_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into a ``num_classes=0`` timm model strictly, ignoring the checkpoint's classifier.

    ``source`` names the weights in error messages.
    """
    prefixes = _classifier_prefixes(model)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        raise InvalidReference(
            f"weights {source} do not fit timm architecture {type(model).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong_shape)} of the wrong shape (e.g. {wrong_shape[:3]}); check ?arch=<timm name>"
        )
    model.load_state_dict(state, strict=True)


def load_timm_state_dict_in_order(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Load a checkpoint whose key names differ from timm's but whose tensors come in timm's order.

    The first ``len(model.state_dict())`` tensors map one-to-one onto the model's keys (shapes must
    match); what remains must be the classifier (a weight ``(classes, num_features)`` and its bias),
    which a ``num_classes=0`` model has no place for.
    """
    own = model.state_dict()
    tensors = list(state.values())
    head = tensors[len(own) :]
    in_features = getattr(model, "num_features", None)
    is_classifier = (
        len(head) == 2
        and head[0].ndim == 2
        and head[0].shape[1] == in_features
        and head[1].shape == head[0].shape[:1]
    )
    if len(tensors) < len(own) or (head and not is_classifier):
        raise InvalidReference(
            f"weights {source} hold {len(tensors)} tensors; timm {type(model).__name__} needs {len(own)} "
            "plus an optional classifier weight and bias"
        )
    mapped = dict(zip(own, tensors, strict=False))
    wrong = [
        (k, tuple(mapped[k].shape), tuple(v.shape)) for k, v in own.items() if mapped[k].shape != v.shape
    ]
    if wrong:
        raise InvalidReference(
            f"weights {source} do not line up with timm's order: {wrong[:3]} (key, got, want)"
        )
    model.load_state_dict(mapped, strict=True)
