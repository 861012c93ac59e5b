"""``zoo:shapes?tower=...``: a tower of the project's own model zoo (``phasecore.zoo``), trained on first use.

The recipe's run is trained and cached by ``phasecore.zoo.train`` (both towers of a joint run at once); this
loader wraps the tower as an encoder: ``f(x) = out·g(x)`` with ``g`` the network, images resized to the
training size (32 px) and scaled as in training, captions tokenised over the ``shapes`` word vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from phasecore.references.refs import ModelRef
from phasecore.sources.base import Encoder, ModelIdentity
from phasecore.zoo.recipe import EMBED_DIM, ZOO_VERSION, ZooRecipe
from phasecore.zoo.towers import Tower
from phasecore.zoo.train import images_tensor, load_tower
from phasecore.zoo.vocab import encode

#: the side of the images the zoo trains on (``TRAIN_DATASET``'s size)
IMAGE_SIZE = 32


class _ZooEncoder(Encoder):
    def __init__(
        self, tower: Tower, *, ref: ModelRef, recipe: ZooRecipe, device: str | torch.device, extra: dict[str, Any]
    ) -> None:
        super().__init__()
        self.tower = tower
        self.alpha = float(recipe.out)
        self.to(device).eval()
        self.identity = ModelIdentity(
            ref=ref.canonical(),
            source="zoo",
            name=ref.name,
            modality=self.modality,
            architecture=type(tower).__name__,
            n_params=sum(p.numel() for p in tower.parameters()),
            embed_dim=EMBED_DIM,
            revision=f"zoo=={ZOO_VERSION}",
            weights_sha256=extra.pop("weights_sha256", None),
            weights="blend" if ref.blend is not None else ("random" if recipe.mode == "random" else "trained"),
            extra={"recipe": recipe.query(), "width": int(tower.width)} | extra,
        )

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def _scaled(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.alpha == 1.0 else self.alpha * out


class ZooVisionEncoder(_ZooEncoder):
    """A zoo image tower: ``x (B, 3, 32, 32)`` scaled -> ``(B, 64)``."""

    modality = "vision"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._scaled(self.tower(x))

    def preprocess(self, items: Sequence[np.ndarray]) -> torch.Tensor:
        """Images ``(H, W, 3) float32 in [0, 1]`` -> ``(B, 3, 32, 32)`` (bilinear, antialiased, when not 32 px)."""
        x = images_tensor([np.asarray(image, dtype=np.float32) for image in items])
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return x.to(self.device)


class ZooTextEncoder(_ZooEncoder):
    """A zoo text tower: ``input_ids``, ``attention_mask (B, T)`` -> ``(B, 64)``."""

    modality = "language"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._scaled(self.tower(input_ids, attention_mask))

    def preprocess(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        ids, mask = encode(list(items))
        return {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
        }


def load_zoo(ref: ModelRef, *, model_root: Path, device: str | torch.device) -> Encoder:
    """The tower of ``ref``'s recipe, trained and cached first when its run is not (``phasecore.zoo.train``)."""
    recipe = ref.zoo_recipe
    tower, record = load_tower(recipe, blend=ref.blend)
    extra: dict[str, Any] = dict(record)
    if ref.blend is not None:
        extra["blend"] = {"t": float(ref.blend), "toward": "the tower's own initialisation"}
    encoder_class = ZooVisionEncoder if recipe.tower == "vision" else ZooTextEncoder
    return encoder_class(tower, ref=ref, recipe=recipe, device=device, extra=extra)
