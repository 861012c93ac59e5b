"""Is a model reference something this deployment can load? Checked at submission, so a typo answers 422
at once instead of failing in a worker minutes later. Only local knowledge is used (the timm registry,
the offline packages, the model root); ``hf:`` names are checked by the worker, which may reach the hub."""

from __future__ import annotations

from pathlib import Path

from phasecore.errors import AssetUnavailable, InvalidReference
from phasecore.paths import default_model_root, resolve_under
from phasecore.sources.base import ModelRef


def check_model_known(reference: str, role: str, *, model_root: Path | None) -> None:
    """Raise InvalidReference / AssetUnavailable / SourceNotAllowed when ``reference`` cannot be loaded."""
    ref = ModelRef.parse(reference)
    if ref.source == "timm":
        from phasecore.sources.timm_source import check_timm_name

        check_timm_name(ref.name)
    elif ref.source == "pkg":
        from phasecore.sources.pkg_source import PACKAGES, package_installed

        package = PACKAGES.get(ref.name)
        if package is None:
            raise InvalidReference(
                f"{role} model {reference!r}: pkg:{ref.name} is not an offline package; "
                f"known: {', '.join(f'pkg:{name}' for name in PACKAGES)}"
            )
        if not package_installed(package):
            raise AssetUnavailable(
                f"{role} model {reference!r}: the package {package.distribution} is not installed here"
            )
    elif ref.source == "file":
        resolve_under(model_root or default_model_root(), ref.name, what="model")
