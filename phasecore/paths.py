"""Local roots for models and data, and path resolution that cannot leave them.

Model files and dataset manifests are named in requests (``file:my-vit``, ``manifest:pairs.jsonl``), so a
name must never reach outside its configured root: not by ``..``, not by an absolute path, not by a symlink.
"""

from __future__ import annotations

import os
from pathlib import Path

from phasecore.errors import AssetUnavailable, SourceNotAllowed

_CACHE = Path("~/.cache/phasescreen")


def default_cache_home() -> Path:
    """Where local runs keep what can be recomputed (``profiles/``, the zoo's ``zoo/``): ``$PHASESCREEN_HOME`` when
    set (one folder for a run's database and caches, as the evidence runs use it), else ``~/.cache/phasescreen``.
    The embedded database's default is the XDG data directory instead (``store.settings.default_home``): it holds
    results and reported outcomes, which cannot be recomputed, so clearing caches must not touch it."""
    home = os.environ.get("PHASESCREEN_HOME")
    return Path(home).expanduser() if home else _CACHE.expanduser()


def default_model_root() -> Path:
    """``$PHASESCREEN_MODEL_ROOT`` or ``~/.cache/phasescreen/models``."""
    return Path(os.environ.get("PHASESCREEN_MODEL_ROOT") or _CACHE / "models").expanduser()


def default_data_root() -> Path:
    """``$PHASESCREEN_DATA_ROOT`` or ``~/.cache/phasescreen/data``."""
    return Path(os.environ.get("PHASESCREEN_DATA_ROOT") or _CACHE / "data").expanduser()


def resolve_under(root: str | Path, name: str | Path, *, what: str) -> Path:
    """The existing path ``name`` (relative to ``root``, or absolute inside it), symlinks resolved.

    Raises SourceNotAllowed when ``name`` contains ``..`` or resolves outside ``root``, and
    AssetUnavailable when it does not exist. ``what`` names the thing in messages ("model", "manifest", ...);
    messages never name the root, what it holds, or a resolved path (they reach API clients).
    """
    given_root = Path(root).expanduser()
    root = given_root.resolve()
    raw = Path(name)
    # messages name only what the caller wrote, relative: never the root, its contents or a resolved path
    shown = repr(str(name)) if not raw.is_absolute() else "(an absolute path)"
    for base in (given_root, root):
        if raw.is_absolute() and raw.is_relative_to(base):
            shown = repr(str(raw.relative_to(base)))
            break
    if ".." in raw.parts:
        raise SourceNotAllowed(f"{what} path {shown} contains '..'; name a path inside the configured {what} root")
    resolved = (raw if raw.is_absolute() else root / raw).resolve()
    if not resolved.is_relative_to(root):
        raise SourceNotAllowed(
            f"{what} path {shown} resolves outside the configured {what} root; "
            f"put the {what} under that root and name it relative to it"
        )
    if not resolved.exists():
        raise AssetUnavailable(
            f"{what} {shown} not found under the configured {what} root; name it relative to that root"
        )
    return resolved
