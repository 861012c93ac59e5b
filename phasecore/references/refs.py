"""Model references, parsed and checked from names alone (no torch): ``source:name[@revision][?key=value]``.

The API process parses and checks every reference it accepts with this module; loading one is
``phasecore.sources``' business.
"""

from __future__ import annotations

import fnmatch
import functools
import unicodedata
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from phasecore.errors import InvalidReference, SourceNotAllowed
from phasecore.queries import query_pairs
from phasecore.zoo.recipe import ZOO_DATASETS, ZooRecipe

SOURCES = ("timm", "hf", "file", "pkg", "zoo")
_OPTION_KEYS = {"weights", "pooling", "arch", "revision", "blend", "seed"}
#: the seed of every random initialisation (``weights=random``, and the random end of ``blend``) unless
#: ``?seed=`` names another
RANDOM_INIT_SEED = 0
#: characters an option value may not hold once decoded: each would make canonical() write a query that
#: re-parses differently (``&`` ``=`` ``?`` split it, ``%`` and ``+`` decode again, ``#`` starts a fragment)
_VALUE_FORBIDDEN = frozenset("&=?%+# ")


def _has_control(text: str) -> bool:
    """Control (Cc) or format (Cf: bidi overrides, zero-width) characters anywhere."""
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


@dataclass(frozen=True)
class ModelRef:
    """A model reference: ``source:name[@revision][?key=value&...]``.

    ``timm:resnet18?weights=random``, ``hf:bert-base-uncased@main?pooling=cls``,
    ``file:my-vit?arch=vit_small_patch16_224``, ``pkg:efficientnet-lite0``,
    ``zoo:shapes?tower=vision&mode=joint&seed=0&steps=600``.

    ``weights`` is ``pretrained`` (default) or ``random``; ``pooling`` is ``mean | cls | last`` for
    language models (None: the source's default); ``arch`` names the timm architecture of a bare
    ``.safetensors`` file.

    ``blend`` = t ∈ [0, 1] (a graded control): θ = (1 − t)·θ_pretrained + t·θ_random, θ_random the seeded
    random initialisation of the same architecture (the one ``weights=random`` builds), for every source with
    pretrained weights; floating-point buffers (BatchNorm running statistics) are blended alike, so t = 1 is
    that random initialisation exactly. ``seed`` (an integer ≥ 0) seeds the random initialisation of ``blend``
    or ``weights=random`` (default ``RANDOM_INIT_SEED``; stored as None when it equals the default).

    ``recipe``: a ``zoo:`` tower's recipe keys, ``((key, value), ...)`` in canonical order
    (``phasecore.zoo.recipe``); None for every other source. A zoo tower's ``blend`` goes toward its own
    initialisation, and its ``seed`` is a recipe key.
    """

    source: str
    name: str
    revision: str | None = None
    weights: Literal["pretrained", "random"] = "pretrained"
    pooling: Literal["mean", "cls", "last"] | None = None
    arch: str | None = None
    blend: float | None = None
    seed: int | None = None
    recipe: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def parse(cls, text: str | ModelRef, **overrides: Any) -> ModelRef:
        if isinstance(text, ModelRef):
            ref = cls(**{**asdict(text), **{k: v for k, v in overrides.items() if v is not None}})
            ref.validate()
            return ref
        if cls is ModelRef and isinstance(text, str) and all(v is None for v in overrides.values()):
            return _parsed(text)  # the common case, remembered: a reference is parsed ~8 times per submission
        return cls._parse(text, overrides)

    @classmethod
    def _parse(cls, text: Any, overrides: dict[str, Any]) -> ModelRef:
        if not isinstance(text, str) or not text.strip():
            raise InvalidReference(f"model reference {text!r} is empty or not text; expected source:name")
        text = text.strip()
        if _has_control(text):
            raise InvalidReference(f"model reference {text!r} holds control characters")
        source, sep, rest = text.partition(":")
        if not sep or source not in SOURCES or not rest:
            raise InvalidReference(
                f"model reference {text!r} is not of the form source:name with source one of "
                f"{', '.join(SOURCES)} (e.g. timm:resnet18, hf:bert-base-uncased, pkg:efficientnet-lite0)"
            )
        rest, _, query = rest.partition("?")
        options: dict[str, Any] = {}
        if "#" in query:
            raise InvalidReference(f"model reference {text!r}: '#' has no meaning in a query")
        if source == "zoo":
            return cls._parse_zoo(text, rest, query, overrides)
        for key, value in query_pairs(
            query,
            _OPTION_KEYS,
            unknown=lambda key: f"unknown option {key!r} in model reference {text!r}; known: "
            f"{', '.join(sorted(_OPTION_KEYS))}",
            twice=lambda key: f"option {key!r} appears twice in model reference {text!r}",
        ):
            bad = sorted(set(value) & _VALUE_FORBIDDEN)
            if bad or _has_control(value):
                raise InvalidReference(
                    f"option {key}={value!r} in model reference {text!r} holds "
                    f"{' '.join(repr(c) for c in bad) or 'control characters'} once decoded; "
                    "option values are plain names"
                )
            options[key] = value
        name, revision = rest, options.pop("revision", None)
        if source in ("hf", "timm") and "@" in rest:
            name, _, revision = rest.partition("@")
        options.update({k: v for k, v in overrides.items() if v is not None})
        if "blend" in options:
            options["blend"] = _parse_blend(options["blend"], text)
        if "seed" in options:
            if "blend" not in options and options.get("weights") != "random":
                raise InvalidReference(
                    f"seed= in {text!r} seeds a random initialisation: use it with blend=t or weights=random"
                )
            options["seed"] = _parse_seed(options["seed"], text)
        ref = cls(source=source, name=name, revision=revision or None, **options)
        ref.validate()
        return ref

    @classmethod
    def _parse_zoo(cls, text: str, name: str, query: str, overrides: dict[str, Any]) -> ModelRef:
        """``zoo:shapes?<recipe>[&blend=t]``: the recipe keys go to ``ZooRecipe``, ``blend`` stays here."""
        if name not in ZOO_DATASETS:
            raise InvalidReference(
                f"zoo reference {text!r}: the zoo trains on {', '.join(ZOO_DATASETS)}, not {name!r} "
                "(e.g. zoo:shapes?tower=vision&mode=joint&seed=0)"
            )
        pairs = parse_qsl(query, keep_blank_values=True)
        blends = [value for key, value in pairs if key == "blend"]
        if len(blends) > 1:
            raise InvalidReference(f"option 'blend' appears twice in model reference {text!r}")
        recipe_query = "&".join(f"{key}={value}" for key, value in pairs if key != "blend")
        recipe = ZooRecipe.parse(recipe_query, text=text)
        blend = _parse_blend(blends[0], text) if blends else None
        if blend is not None and recipe.mode == "random":
            raise InvalidReference(
                f"blend in {text!r} goes toward the tower's own initialisation; a random tower is that already"
            )
        extra = {k: v for k, v in overrides.items() if v is not None}
        if extra:
            raise InvalidReference(f"{', '.join(sorted(extra))} cannot be set on a zoo reference ({text!r})")
        ref = cls(source="zoo", name=name, blend=blend, recipe=recipe.pairs())
        ref.validate()
        return ref

    @property
    def zoo_recipe(self) -> ZooRecipe:
        """The recipe of a ``zoo:`` reference (InvalidReference for any other source)."""
        if self.source != "zoo" or self.recipe is None:
            raise InvalidReference(f"{self.canonical()} is not a zoo tower")
        return ZooRecipe.parse("&".join(f"{k}={v}" for k, v in self.recipe), text=self.canonical())

    def validate(self) -> None:
        if self.weights not in ("pretrained", "random"):
            raise InvalidReference(f"weights={self.weights!r} is not one of pretrained, random")
        if self.pooling not in (None, "mean", "cls", "last"):
            raise InvalidReference(f"pooling={self.pooling!r} is not one of mean, cls, last")
        if not self.name:
            raise InvalidReference(f"model reference {self.source}: has no name")
        if (self.source == "zoo") != (self.recipe is not None):
            raise InvalidReference("a recipe belongs to a zoo: reference, and every zoo: reference has one")
        zoo_extras = self.weights != "pretrained" or self.seed is not None or self.pooling or self.arch
        if self.source == "zoo" and zoo_extras:
            raise InvalidReference(
                "a zoo tower takes its recipe keys and blend only (mode=random for an untrained tower, seed= "
                "in the recipe)"
            )
        if "?" in self.name or _has_control(self.name):
            raise InvalidReference(f"model name {self.name!r} holds '?' or control characters")
        for key, value in (("arch", self.arch), ("revision", self.revision)):
            if value is not None and (set(value) & _VALUE_FORBIDDEN or _has_control(value)):
                raise InvalidReference(
                    f"{key}={value!r} holds a character a model reference cannot carry (& = ? % + #, "
                    "spaces or control characters)"
                )
        if self.blend is not None:
            if self.weights == "random":
                raise InvalidReference(
                    "blend=t mixes the pretrained weights with a random init; it cannot go with weights=random "
                    "(blend=1 is the random init)"
                )
            if isinstance(self.blend, bool) or not isinstance(self.blend, int | float):
                raise InvalidReference(f"blend={self.blend!r} must be a number t in [0, 1]")
            if not 0.0 <= self.blend <= 1.0:  # also rejects nan
                raise InvalidReference(f"blend={self.blend!r} must lie in [0, 1] (0: pretrained, 1: random init)")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
                raise InvalidReference(f"seed={self.seed!r} must be an integer ≥ 0")
            if self.blend is None and self.weights != "random":
                raise InvalidReference(
                    "seed= seeds a random initialisation: use it with blend=t or weights=random"
                )

    @property
    def init_seed(self) -> int:
        """The seed of this reference's random initialisation (``seed``, or the default)."""
        return RANDOM_INIT_SEED if self.seed is None else self.seed

    def canonical(self) -> str:
        """The normalised text form; parse(canonical()) == self."""
        text = f"{self.source}:{self.name}"
        if self.recipe is not None:
            query = "&".join(f"{k}={v}" for k, v in self.recipe)
            if self.blend is not None:
                query += f"&blend={_format_float(float(self.blend))}"
            return f"{text}?{query}"
        if self.revision and self.source in ("hf", "timm"):
            text += f"@{self.revision}"
        opts = [
            f"{k}={v}"
            for k, v in (("weights", self.weights), ("pooling", self.pooling), ("arch", self.arch))
            if v is not None and not (k == "weights" and v == "pretrained")
        ]
        if self.blend is not None:
            opts.append(f"blend={_format_float(float(self.blend))}")
        if self.seed is not None:
            opts.append(f"seed={self.seed}")
        if self.revision and self.source not in ("hf", "timm"):
            opts.append(f"revision={self.revision}")
        return text + ("?" + "&".join(opts) if opts else "")


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> ModelRef:
    """``ModelRef.parse(text)``, remembered (the result is frozen; errors are raised again each time)."""
    return ModelRef._parse(text, {})


def _parse_blend(value: Any, text: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InvalidReference(
            f"blend={value!r} in {text!r} is not a number; blend=t takes t in [0, 1] (0: pretrained, 1: random init)"
        ) from None
    if not 0.0 <= t <= 1.0:
        raise InvalidReference(f"blend={value!r} in {text!r} must lie in [0, 1] (0: pretrained, 1: random init)")
    return t


def _parse_seed(value: Any, text: str) -> int | None:
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise InvalidReference(f"seed={value!r} in {text!r} is not an integer ≥ 0") from None
    if seed < 0:
        raise InvalidReference(f"seed={value!r} in {text!r} must be an integer ≥ 0")
    return None if seed == RANDOM_INIT_SEED else seed  # the default seed has one canonical form: none


def _format_float(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


#: the sources PHASESCREEN_ALLOWED_MODELS patterns may restrict
PATTERN_SOURCES = ("hf", "timm")


def parse_model_patterns(patterns: Collection[str]) -> tuple[str, ...]:
    """``hf:<org>/<name glob>`` / ``timm:<name glob>`` entries, checked; raises ValueError on any other."""
    checked: list[str] = []
    for pattern in patterns:
        source, sep, glob = pattern.strip().partition(":")
        if not sep or source not in PATTERN_SOURCES or not glob or _has_control(glob):
            raise ValueError(
                f"model pattern {pattern!r} is not source:glob with source one of {', '.join(PATTERN_SOURCES)} "
                "(e.g. hf:sentence-transformers/*, timm:resnet*)"
            )
        checked.append(f"{source}:{glob}")
    return tuple(checked)


def check_allowed_models(ref: ModelRef, patterns: Collection[str]) -> None:
    """When ``patterns`` name ``ref``'s source (``hf:`` or ``timm:``), its name must match one of them
    (shell-style globs, case-sensitive; a timm name matches by itself or by its architecture, the part before a
    pretrained tag). Sources no pattern names are left to ``check_allowed``."""
    globs = [p.partition(":")[2] for p in patterns if p.partition(":")[0] == ref.source]
    if not globs:
        return
    names = {ref.name}
    if ref.source == "timm":
        names.add(ref.name.partition(".")[0])
    if any(fnmatch.fnmatchcase(name, glob) for name in names for glob in globs):
        return
    raise SourceNotAllowed(
        f"{ref.canonical()} is not among the {ref.source}: models allowed here "
        f"({', '.join(f'{ref.source}:{g}' for g in globs)})"
    )


def check_allowed(ref: ModelRef, allowed_sources: Collection[str]) -> None:
    """``allowed_sources`` holds source names, or ``hf:<org>`` entries that allow only that hub org."""
    if ref.source in allowed_sources:
        return
    org = ref.name.partition("/")[0] if "/" in ref.name else None
    if ref.source == "hf" and org is not None and f"hf:{org}" in allowed_sources:
        return
    raise SourceNotAllowed(
        f"{ref.canonical()} is not allowed here; allowed sources: {', '.join(sorted(allowed_sources)) or 'none'}"
    )
