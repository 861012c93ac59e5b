"""Model references, parsed and checked from names alone (no torch): ``source:name[@revision][?key=value]``.

The API process parses and checks every reference it accepts with this module; loading one is
``phasecore.sources``' business.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from phasecore.errors import InvalidReference, SourceNotAllowed

SOURCES = ("timm", "hf", "file", "pkg")
_OPTION_KEYS = {"weights", "pooling", "arch", "revision"}


@dataclass(frozen=True)
class ModelRef:
    """A model reference: ``source:name[@revision][?key=value&...]``.

    ``timm:resnet18?weights=random``, ``hf:bert-base-uncased@main?pooling=cls``,
    ``file:my-vit?arch=vit_small_patch16_224``, ``pkg:efficientnet-lite0``.

    ``weights`` is ``pretrained`` (default) or ``random``; ``pooling`` is ``mean | cls | last`` for
    language models (None: the source's default); ``arch`` names the timm architecture of a bare
    ``.safetensors`` file.
    """

    source: str
    name: str
    revision: str | None = None
    weights: Literal["pretrained", "random"] = "pretrained"
    pooling: Literal["mean", "cls", "last"] | None = None
    arch: str | None = None

    @classmethod
    def parse(cls, text: str | ModelRef, **overrides: Any) -> ModelRef:
        if isinstance(text, ModelRef):
            return cls(**{**asdict(text), **{k: v for k, v in overrides.items() if v is not None}})
        if not isinstance(text, str) or "\x00" in text or not text.strip():
            raise InvalidReference(f"model reference {text!r} is empty or not text; expected source:name")
        text = text.strip()
        source, sep, rest = text.partition(":")
        if not sep or source not in SOURCES or not rest:
            raise InvalidReference(
                f"model reference {text!r} is not of the form source:name with source one of "
                f"{', '.join(SOURCES)} (e.g. timm:resnet18, hf:bert-base-uncased, pkg:efficientnet-lite0)"
            )
        rest, _, query = rest.partition("?")
        options: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in _OPTION_KEYS:
                raise InvalidReference(
                    f"unknown option {key!r} in model reference {text!r}; known: {', '.join(sorted(_OPTION_KEYS))}"
                )
            options[key] = value
        name, revision = rest, options.pop("revision", None)
        if source in ("hf", "timm") and "@" in rest:
            name, _, revision = rest.partition("@")
        options.update({k: v for k, v in overrides.items() if v is not None})
        ref = cls(source=source, name=name, revision=revision or None, **options)
        ref.validate()
        return ref

    def validate(self) -> None:
        if self.weights not in ("pretrained", "random"):
            raise InvalidReference(f"weights={self.weights!r} is not one of pretrained, random")
        if self.pooling not in (None, "mean", "cls", "last"):
            raise InvalidReference(f"pooling={self.pooling!r} is not one of mean, cls, last")
        if not self.name:
            raise InvalidReference(f"model reference {self.source}: has no name")

    def canonical(self) -> str:
        """The normalised text form; parse(canonical()) == self."""
        text = f"{self.source}:{self.name}"
        if self.revision and self.source in ("hf", "timm"):
            text += f"@{self.revision}"
        opts = [
            f"{k}={v}"
            for k, v in (("weights", self.weights), ("pooling", self.pooling), ("arch", self.arch))
            if v is not None and not (k == "weights" and v == "pretrained")
        ]
        if self.revision and self.source not in ("hf", "timm"):
            opts.append(f"revision={self.revision}")
        return text + ("?" + "&".join(opts) if opts else "")


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
