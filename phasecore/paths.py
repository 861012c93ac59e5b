"""Local roots for models and data, and path resolution that cannot leave them.

Model files and dataset manifests are named in requests (``file:my-vit``, ``manifest:pairs.jsonl``), so a
name must never reach outside its configured root: not by ``..``, not by an absolute path, not by a symlink.
"""

from __future__ import annotations

import os
from pathlib import Path

from phasecore.errors import AssetUnavailable, SourceNotAllowed

_CACHE = Path("~/.cache/phasescreen")


def default_model_root() -> Path:
    """``$PHASESCREEN_MODEL_ROOT`` or ``~/.cache/phasescreen/models``."""
    return Path(os.environ.get("PHASESCREEN_MODEL_ROOT") or _CACHE / "models").expanduser()


def default_data_root() -> Path:
    """``$PHASESCREEN_DATA_ROOT`` or ``~/.cache/phasescreen/data``."""
    return Path(os.environ.get("PHASESCREEN_DATA_ROOT") or _CACHE / "data").expanduser()


def resolve_under(root: str | Path, name: str | Path, *, what: str) -> Path:
    """The existing path ``name`` (relative to ``root``, or absolute inside it), symlinks resolved.

    Raises SourceNotAllowed when ``name`` contains ``..`` or resolves outside ``root``, and
    AssetUnavailable (listing what the root holds) when it does not exist. ``what`` names the
    thing in messages ("model", "manifest", ...).
    """
    root = Path(root).expanduser().resolve()
    raw = Path(name)
    if ".." in raw.parts:
        raise SourceNotAllowed(f"{what} path {str(name)!r} contains '..'; name a path inside {root}")
    resolved = (raw if raw.is_absolute() else root / raw).resolve()
    if not resolved.is_relative_to(root):
        raise SourceNotAllowed(
            f"{what} path {str(name)!r} resolves to {resolved}, outside the configured root {root}; "
            f"put the {what} under {root} and name it relative to it"
        )
    if not resolved.exists():
        held = sorted(p.name for p in root.iterdir())[:20] if root.is_dir() else []
        where = f"{root} holds: {', '.join(held)}" if held else f"{root} is empty or missing"
        raise AssetUnavailable(f"{what} {str(name)!r} not found at {resolved}; {where}")
    return resolved
