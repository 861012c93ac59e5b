"""What the local (embedded) runs of ``screen``, ``batch`` and ``gate`` share: their flags, where profiles are
cached, which device the models run on, how one pair is screened, and how its screening and a training run's
outcome are recorded in the local database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from phasecore.screening.result import ScreeningResult


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
    from phasecore.paths import default_cache_home
    from phasecore.screening.pipeline import ProfileCache

    if getattr(args, "no_cache", False):
        return None
    return ProfileCache(args.cache_dir or default_cache_home() / "profiles")


def local_device(args: argparse.Namespace) -> str:
    """``--device``, else the deployment setting ``PHASESCREEN_DEVICE`` (validated), else ``auto``."""
    from store.settings import ServiceSettings

    return args.device or ServiceSettings().device


def screen_locally(
    args: argparse.Namespace, settings: Any, *, device: str, command: str, progress: Any = None
) -> ScreeningResult:
    """What ``screen`` and ``gate`` run on this machine: the request checked (seconds, before minutes of work), the
    pair of ``--vision`` and ``--language`` on ``--dataset`` screened with the engine ``settings`` on ``device``
    (profiles from the local cache when there, :func:`profile_cache`; models and data from the engine's roots,
    PHASESCREEN_MODEL_ROOT and PHASESCREEN_DATA_ROOT), and each rule's measured accuracy over the local database
    attached beside the paper's claim, as the API's workers attach it to a stored result
    (:func:`attach_measured_rules`). Raises ``PhasescreenError`` on a request the engine refuses."""
    from phasecore.screening.pipeline import screen
    from phasecore.screening.validation import validate_request

    validate_request(args.vision, args.language, args.dataset, settings)
    result = screen(
        args.vision,
        args.language,
        args.dataset,
        settings,
        cache=profile_cache(args),
        progress=progress,
        device=device,
    )
    return attach_measured_rules(result, command)


def attach_measured_rules(result: ScreeningResult, command: str) -> ScreeningResult:
    """Each rule's measured accuracy over the pairs in the local database, beside the paper's claim; the result as
    it is (a warning on stderr says why) when there is no local database to read."""
    try:
        from store.db import local_session
        from store.records import with_measured_rules

        with local_session() as session:
            return with_measured_rules(session, result)
    except Exception as exc:  # no local database (read-only home, ...): the result stands without it
        print(f"phasescreen {command}: the rules' measured accuracy is not attached ({exc})", file=sys.stderr)
        return result


def store_screening(args: argparse.Namespace, settings: Any, result: ScreeningResult) -> str | None:
    """Record the result of ``--vision``/``--language``/``--dataset`` with ``settings`` in the local database:
    its screening id; ``None`` with ``--no-store``, or when it could not be stored (a warning on stderr says
    why: the result stands without it)."""
    from jobs.screenings import store_local_result

    if args.no_store:
        return None
    request = {
        "vision": args.vision,
        "language": args.language,
        "dataset": args.dataset,
        "options": settings.model_dump(mode="json"),
    }
    try:
        return store_local_result(request, result)
    except Exception as exc:  # the result is printed or written already; storing it is a convenience
        print(f"warning: result not stored in the local database: {exc}", file=sys.stderr)
        return None


def report_locally(
    session: Any, screening_id: str, request: dict[str, Any], *, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Record ``request`` (the body ``POST /v1/screenings/{id}/outcomes`` takes, checked as the API checks it)
    in the local database, as the route does; commits. The outcome as the API answers it (JSON)."""
    from jobs.outcomes import report_outcome
    from service.outcome_schemas import OutcomeRequest
    from service.views import outcome_out

    checked = OutcomeRequest.model_validate(request)
    outcome, screening, _ = report_outcome(session, screening_id, checked.model_dump(), idempotency_key=idempotency_key)
    return dict(outcome_out(outcome, screening).model_dump(mode="json"))
