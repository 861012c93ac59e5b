"""``phasescreen outcome report | list | simulate``: what training runs of screened pairs achieved (the study's
reported labels); ``simulate`` runs a short real contrastive training of each screened pair (frozen towers, linear
heads: ``phasecore.groundtruth.contrastive``) and reports what it reached, the loop's demonstration (docs/evidence.md).

Locally (the embedded default) the outcome is recorded in the local database next to the screenings
``phasescreen screen`` and ``gate`` stored there; with ``--server URL`` (or ``$PHASESCREEN_SERVER``) through
:mod:`service.client`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.batch import _client, _error, _expected_errors, _server_arguments
from cli.local import report_locally
from problems import Problem

PASS, ERROR = 0, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outcome = sub.add_parser(
        "outcome",
        help="report what a training run of a screened pair achieved, or list the reported runs",
        description="The training job that follows a screening knows the real answer. Report it, and the study "
        "(`phasescreen study`, GET /v1/study) scores the rules against it beside the screening's own proxy, and "
        "the gate's --policy reported uses it.",
    )
    commands = outcome.add_subparsers(dest="outcome_command", metavar="COMMAND", required=True)
    report = commands.add_parser(
        "report",
        help="report one training run's outcome for a succeeded screening",
        description="Record what a training run of the screening's pair reached on METRIC, and whether that is a "
        "success by the team's own threshold (--success-above T: value ≥ T; --success-below T: value ≤ T). "
        "Several runs per screening are allowed; the study labels a pair by its latest run. Exit 0 when "
        "recorded, 2 on an error (unknown or unfinished screening, invalid value, server unreachable).",
    )
    report.add_argument("screening_id", metavar="SCREENING_ID", help="the screening whose pair was trained")
    report.add_argument("--metric", required=True, help="e.g. zero_shot_top1, retrieval_r1, or a name of your own")
    report.add_argument("--value", required=True, type=float, help="what the run reached on the metric")
    direction = report.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--success-above", type=float, metavar="T", help="success when the value is at least T (accuracy, recall)"
    )
    direction.add_argument(
        "--success-below", type=float, metavar="T", help="success when the value is at most T (a loss, an error rate)"
    )
    report.add_argument("--dataset", required=True, help="the evaluation dataset, e.g. imagenet-1k:val")
    report.add_argument("--examples", type=int, help="training examples seen")
    report.add_argument("--steps", type=int, help="optimiser steps")
    report.add_argument("--method", help="e.g. linear-probe, lit, full-finetune")
    report.add_argument("--run-url", help="where the run is recorded (http or https)")
    report.add_argument("--notes", help="free text, at most 2000 characters")
    report.add_argument(
        "--idempotency-key", help="server mode: the same key reports once, however often the job retries"
    )
    report.add_argument("--json", action="store_true", help="print the recorded outcome as JSON")
    _server_arguments(report)
    report.set_defaults(func=run_report_outcome)

    listing = commands.add_parser("list", help="the reported runs of a screening, newest first")
    listing.add_argument("screening_id", metavar="SCREENING_ID")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    _server_arguments(listing)
    listing.set_defaults(func=run_list_outcomes)

    simulate = commands.add_parser(
        "simulate",
        help="train each screened pair's frozen towers through linear heads and report what they reached",
        description="A real training job in miniature, for screened pairs: the pair's two towers frozen, two linear "
        "heads trained with a symmetric InfoNCE loss on a fresh sample of the screening's dataset (its seed + 1), "
        "once per held-out group with that group's classes unseen, and scored on the held-out values as METRICS "
        "§7 scores its map (metric held_out_contrastive: mean chance-corrected accuracy, 0 chance, 1 perfect). "
        "The value is reported as an outcome of the screening (success when ≥ --success-above). Pairs come from "
        "SCREENING_IDs, a batch document (--results FILE, what `phasescreen batch --output` wrote) or, with "
        "--server, a batch id (--batch). Exit 0 when every pair was reported, 2 on an error.",
    )
    simulate.add_argument("screening_ids", metavar="SCREENING_ID", nargs="*", help="succeeded screenings")
    simulate.add_argument("--results", metavar="FILE", help="a batch document: every succeeded pair in it")
    simulate.add_argument("--batch", metavar="BATCH_ID", help="server mode: every succeeded pair of the batch")
    simulate.add_argument(
        "--success-above", type=float, default=0.3, metavar="T",
        help="a run succeeds when its held-out score is at least T (default 0.3)",
    )  # fmt: skip
    simulate.add_argument("--steps", type=int, default=150, help="optimiser steps per held-out group (default 150)")
    simulate.add_argument("--json", action="store_true", help="print the recorded outcomes as JSON")
    _server_arguments(simulate)
    simulate.set_defaults(func=run_simulate_outcomes)


def _failed(command: str, exc: BaseException) -> int:
    """Exit 2 with one line; a request that fails validation names the field (``value: Input should be a finite
    number``)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return _error(command, f"invalid outcome: {where}: {error['msg']}")
    return _error(command, exc)


def _errors() -> tuple[type[BaseException], ...]:
    """What a command reports as one line and exit 2: the usual errors, and in local mode the problems the
    shared functions raise (no such screening, one that has not succeeded, an Idempotency-Key reused)."""
    return (*_expected_errors(), Problem)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    above = args.success_above is not None
    return {
        "metric": args.metric,
        "value": args.value,
        "success_threshold": args.success_above if above else args.success_below,
        "success_direction": "above" if above else "below",
        "dataset": args.dataset,
        "examples": args.examples,
        "steps": args.steps,
        "method": args.method,
        "run_url": args.run_url,
        "notes": args.notes,
    }


def run_report_outcome(args: argparse.Namespace) -> int:
    try:
        if args.server:
            with _client(args) as client:
                out = client.report_outcome(
                    args.screening_id, **_request(args), idempotency_key=args.idempotency_key
                ).model_dump(mode="json")
        else:
            out = _report_here(args)
    except _errors() as exc:
        return _failed("outcome report", exc)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(_line(out))
    return PASS


def _report_here(args: argparse.Namespace) -> dict[str, Any]:
    from store.db import local_session

    with local_session() as session:
        return report_locally(session, args.screening_id, _request(args), idempotency_key=args.idempotency_key)


def run_list_outcomes(args: argparse.Namespace) -> int:
    try:
        if args.server:
            with _client(args) as client:
                items = [item.model_dump(mode="json") for item in client.outcomes(args.screening_id)]
        else:
            items = _list_here(args.screening_id)
    except _errors() as exc:
        return _failed("outcome list", exc)
    if args.json:
        print(json.dumps(items, indent=1))
    elif not items:
        print(f"no outcome reported for screening {args.screening_id}", file=sys.stderr)
    for item in [] if args.json else items:
        print(_line(item))
    return PASS


def _list_here(screening_id: str) -> list[dict[str, Any]]:
    from jobs.outcomes import list_outcomes
    from service.views import outcome_out
    from store.db import local_session

    items: list[dict[str, Any]] = []
    cursor = None
    with local_session() as session:
        while True:
            page, screening, cursor = list_outcomes(session, screening_id, limit=100, cursor=cursor)
            items.extend(outcome_out(row, screening).model_dump(mode="json") for row in page)
            if cursor is None:
                return items


def _line(out: dict[str, Any]) -> str:
    bar = "≥" if out["success_direction"] == "above" else "≤"
    verdict = "SUCCESS" if out["success"] else "FAILURE"
    proxy = out.get("proxy_outcome") or "no ground truth"
    return (
        f"outcome {out['id']} of screening {out['screening_id']}: {out['metric']} = {out['value']:g} on "
        f"{out['dataset']} -> {verdict} (success when {bar} {out['success_threshold']:g}); the screening's own "
        f"proxy outcome: {proxy}"
    )


def run_simulate_outcomes(args: argparse.Namespace) -> int:
    from cli.simulate import simulate_outcomes

    expected: tuple[type[BaseException], ...] = (*_errors(), OSError, ValueError, KeyError)
    try:
        recorded = simulate_outcomes(args)
    except expected as exc:
        return _failed("outcome simulate", exc)
    if args.json:
        print(json.dumps(recorded, indent=1))
    return PASS
