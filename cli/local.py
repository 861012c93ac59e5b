"""What the local (embedded) runs of ``screen``, ``batch`` and ``gate`` share: their flags, where profiles are
cached, which device the models run on, and how one screening is recorded in the local database."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, help="local profile cache (default $PHASESCREEN_HOME/profiles)")
    parser.add_argument("--no-store", action="store_true", help="local runs: do not record results in the database")
    parser.add_argument(
        "--device",
        help="local runs: auto | cpu | cuda | cuda:N (default $PHASESCREEN_DEVICE, else auto: a GPU when "
        "torch sees one)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def profile_cache(args: argparse.Namespace) -> Any:
    """The on-disk profile cache (``--cache-dir``, else ``$PHASESCREEN_HOME/profiles``); None with ``--no-cache``."""
    from phasecore.screening.pipeline import ProfileCache

    if getattr(args, "no_cache", False):
        return None
    home = Path(os.environ.get("PHASESCREEN_HOME", Path.home() / ".cache" / "phasescreen"))
    return ProfileCache(args.cache_dir or home / "profiles")


def local_device(args: argparse.Namespace) -> str:
    """``--device``, else the deployment setting ``PHASESCREEN_DEVICE`` (validated), else ``auto``."""
    from store.settings import ServiceSettings

    return args.device or ServiceSettings().device


def store_screening(args: argparse.Namespace, settings: Any, result: dict[str, Any]) -> str:
    """Record the result of ``--vision``/``--language``/``--dataset`` with ``settings`` locally; its id."""
    from service.screenings import store_local_result

    request = {
        "vision": args.vision,
        "language": args.language,
        "dataset": args.dataset,
        "options": settings.model_dump(mode="json"),
    }
    return store_local_result(request, result)
