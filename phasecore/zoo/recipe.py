"""Zoo recipes: ``zoo:shapes?tower=vision|text&key=value...``, parsed and checked from names alone (no torch).

A recipe names one tower and how it was trained. Keys (defaults in brackets; a default is left out of the
canonical form):

- ``tower``: ``vision`` or ``text`` (required).
- ``mode`` [joint]: ``joint`` (trained with a tower of the other modality by symmetric InfoNCE over all classes),
  ``unimodal`` (trained alone on a class or attribute head, or a masked-word objective), ``random`` (no training:
  the seeded initialisation).
- ``seed`` [0]: this tower's initialisation seed; for a joint run it also seeds the data order.
- ``partner`` [= seed]: joint only, the initialisation seed of the other tower of the run. The vision tower
  ``seed=0&partner=1`` and the text tower ``seed=1&partner=0`` are the two towers of one run.
- ``steps`` [600]: optimiser steps (batch ``BATCH``); not with ``mode=random``.
- ``width`` [32]: the image CNN's base width; the text tower's width is twice it.
- ``text`` [transformer]: the text architecture, ``transformer`` or ``gru``; for a joint vision tower it names the
  partner's architecture; not for a unimodal or random vision tower.
- ``objective`` [class]: unimodal only, ``class`` (one head over the C classes), ``attribute`` (a colour head and a
  shape head) or, for text, ``masked`` (predict a masked word from the others).
- ``lr`` [0.002]: AdamW's peak learning rate (one-cycle); not with ``mode=random``.
- ``init`` [1]: every weight matrix of the seeded initialisation multiplied by this (biases and norm gains not).
- ``out`` [1]: the output multiplier α, ``f(x) = α·g(x)`` (the lazy-training knob, Chizat & Bach): the loss of a
  run is divided by α², and since AdamW's step does not shrink with the loss's scale, its learning rate is divided
  by α, so the weights move O(1/α) from their initialisation.
- ``caption_noise`` [0]: the fraction of training pairs whose caption names another class (the ``shapes``
  option of the same name, on the training set); joint runs and unimodal text towers.
- ``blend`` (a ``ModelRef`` option, not a recipe key): θ = (1 − t)·θ_trained + t·θ_init, toward this tower's own
  initialisation; not with ``mode=random``.

Training data (part of ``ZOO_VERSION``): ``TRAIN_SIZE`` pairs of ``TRAIN_DATASET``, drawn with seed
``TRAIN_DATA_SEED``, another seed than any evaluation sample a grid uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from phasecore.errors import InvalidReference
from phasecore.queries import query_pairs

#: the zoo's code version: part of every zoo tower's identity and cache key; raise it when training changes
ZOO_VERSION = "1"
#: the only dataset the zoo trains on (the name part of ``zoo:<dataset>``)
ZOO_DATASETS = ("shapes",)
TRAIN_DATASET = "shapes?colors=10&shapes=8&size=32"
TRAIN_SIZE = 8000
TRAIN_DATA_SEED = 1_000_003
BATCH = 128
EMBED_DIM = 64

MODES = ("joint", "unimodal", "random")
TOWERS = ("vision", "text")
TEXT_ARCHS = ("transformer", "gru")
OBJECTIVES = ("class", "attribute", "masked")

#: the keys a recipe may hold, in canonical order
KEYS = ("tower", "mode", "seed", "partner", "steps", "width", "text", "objective", "lr", "init", "out", "caption_noise")
_MAX_SEED = 2**31 - 1

# Training cost on the reference machine (the 2-core CPU of docs/benchmarks.md, one thread): a joint step of
# batch 128 at width 32 with the transformer text tower, measured (docs/evidence.md, "The zoo"); a width-w run
# costs about (w/32)² of it, a unimodal run about the share of its tower.
JOINT_STEP_SECONDS = 0.17
VISION_SHARE = 0.75
DATA_SECONDS = 15.0  # rendering the training set once per process


@dataclass(frozen=True)
class ZooRecipe:
    """One zoo tower's recipe (the module docstring gives every key)."""

    tower: str
    mode: str = "joint"
    seed: int = 0
    partner: int | None = None
    steps: int = 600
    width: int = 32
    text: str = "transformer"
    objective: str | None = None
    lr: float = 2e-3
    init: float = 1.0
    out: float = 1.0
    caption_noise: float = 0.0

    @classmethod
    def parse(cls, query: str, *, text: str = "") -> ZooRecipe:
        """The recipe of a ``zoo:shapes?<query>`` reference (``text`` is the whole reference, for messages)."""
        given = dict(
            query_pairs(
                query,
                KEYS,
                unknown=lambda key: f"unknown recipe key {key!r} in zoo reference {text!r}; known: "
                f"{', '.join(KEYS)}, blend",
                twice=lambda key: f"recipe key {key!r} appears twice in zoo reference {text!r}",
            )
        )
        if "tower" not in given:
            raise InvalidReference(f"zoo reference {text!r} names no tower: add tower=vision or tower=text")
        values: dict[str, Any] = {}
        for key, raw in given.items():
            values[key] = _convert(key, raw, text)
        mode = values.get("mode", "joint")
        for key in ("steps", "lr", "caption_noise", "objective", "partner"):
            if key in values and not _applies(key, mode, values["tower"]):
                raise InvalidReference(
                    f"recipe key {key!r} has no meaning for {_what(mode, values['tower'])} ({text!r})"
                )
        if "text" in values and values["tower"] == "vision" and mode != "joint":
            raise InvalidReference(
                f"recipe key 'text' names a joint vision tower's partner; {_what(mode, 'vision')} has none ({text!r})"
            )
        if values.get("objective") == "masked" and values["tower"] != "text":
            raise InvalidReference(f"objective='masked' is a text objective; {text!r} is a vision tower")
        if mode == "unimodal":
            values.setdefault("objective", "class")
        if values.get("partner") == values.get("seed", 0):
            values.pop("partner")
        recipe = cls(**values)
        return recipe

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(key, value) of every non-default key, in canonical order: the form a ``ModelRef`` stores."""
        defaults = {f.name: f.default for f in fields(self)}
        if self.mode == "unimodal":
            defaults["objective"] = "class"
        out = []
        for key in KEYS:
            value = getattr(self, key)
            if key == "tower" or value != defaults[key]:
                out.append((key, _format(value)))
        return tuple(out)

    def query(self) -> str:
        return "&".join(f"{k}={v}" for k, v in self.pairs())

    @property
    def partner_seed(self) -> int:
        """A joint tower's partner's initialisation seed (its own seed when not named)."""
        return self.seed if self.partner is None else self.partner

    def run(self) -> ZooRecipe:
        """The recipe of the training run this tower comes from, written as its vision tower for a joint run (both
        towers of a run share it) and as the tower itself otherwise."""
        if self.mode != "joint" or self.tower == "vision":
            return self
        return replace(
            self, tower="vision", seed=self.partner_seed, partner=None if self.partner_seed == self.seed else self.seed
        )

    def run_key(self) -> str:
        """The run's canonical recipe and the zoo version: the name of its cache entry."""
        return f"zoo-{ZOO_VERSION}:shapes?{self.run().query()}"

    def training_seconds(self) -> float:
        """Estimated seconds to train this tower's run on the reference machine (0 for ``mode=random``)."""
        if self.mode == "random":
            return 0.0
        scale = (self.width / 32) ** 2
        share = 1.0 if self.mode == "joint" else (VISION_SHARE if self.tower == "vision" else 1 - VISION_SHARE)
        return DATA_SECONDS + self.steps * JOINT_STEP_SECONDS * scale * share


def _applies(key: str, mode: str, tower: str) -> bool:
    if key in ("steps", "lr"):
        return mode != "random"
    if key == "caption_noise":
        return mode == "joint" or (mode == "unimodal" and tower == "text")
    if key == "objective":
        return mode == "unimodal"
    if key == "partner":
        return mode == "joint"
    return True


def _what(mode: str, tower: str) -> str:
    return {"joint": "a joint", "unimodal": "a unimodal", "random": "a random"}[mode] + f" {tower} tower"


def _convert(key: str, raw: str, text: str) -> Any:
    choices = {"tower": TOWERS, "mode": MODES, "text": TEXT_ARCHS, "objective": OBJECTIVES}
    if key in choices:
        if raw not in choices[key]:
            raise InvalidReference(f"{key}={raw!r} in {text!r} is not one of {', '.join(choices[key])}")
        return raw
    if key in ("seed", "partner", "steps", "width"):
        low, high = {"seed": (0, _MAX_SEED), "partner": (0, _MAX_SEED), "steps": (1, 20_000), "width": (4, 128)}[key]
        try:
            number = int(raw)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise InvalidReference(f"{key}={raw!r} in {text!r} must be an integer from {low} to {high}")
        return number
    low_f, high_f, closed_low = {
        "lr": (0.0, 1.0, False),
        "init": (0.0, 100.0, False),
        "out": (0.0, 10_000.0, False),
        "caption_noise": (0.0, 1.0, True),
    }[key]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (low_f <= value <= high_f if closed_low else low_f < value <= high_f):  # also rejects nan
        bracket = "[" if closed_low else "("
        raise InvalidReference(f"{key}={raw!r} in {text!r} must be a number in {bracket}{low_f:g}, {high_f:g}]")
    return value


def _format(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)
