"""``phasescreen batch | gate | report | study``: grids of pairs, the CI gate, reports and prediction quality.

Each command runs on this machine by default (the embedded default: the pipeline in-process, profiles in the
local cache, results in the local database) or against a server with ``--server URL`` (or
``$PHASESCREEN_SERVER``; ``$PHASESCREEN_API_KEY`` for a key), through :mod:`service.client`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.engine_flags import add_engine_arguments, engine_overrides
from cli.local import add_local_arguments, local_device, profile_cache, screen_locally, store_screening

if TYPE_CHECKING:  # imported lazily, where a command talks to a server or reads the study
    from phasecore.study.report_schema import StudyOut
    from service.client import PhasescreenClient

# the CI gate's exit codes
PASS, FAIL, ERROR = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batch = sub.add_parser(
        "batch",
        help="screen every pair of a grid file, locally or on a server",
        description="Screen every (vision, language) pair of a grid YAML file (see grids/offline.yaml). Each "
        "model's profile is computed once and shared by its pairs. Writes the batch results JSON (the input of "
        "`phasescreen report`) and prints a summary table. Exit 0 when every pair succeeded, 1 when some "
        "failed, 2 on a usage, input or connection error.",
    )
    batch.add_argument("grid", type=Path, help="grid YAML file: dataset, options, vision and language lists")
    _server_arguments(batch)
    add_engine_arguments(batch)
    batch.add_argument("--output", "-o", type=Path, help="results JSON (default <grid name>.results.json here)")
    batch.add_argument("--csv", type=Path, help="also write the results table as CSV")
    batch.add_argument("--report", type=Path, metavar="DIR", help="also write the report (PNG, SVG, index.html)")
    batch.add_argument("--timeout", type=float, default=7 * 86400.0, help="seconds to wait for a server batch")
    add_local_arguments(batch)
    batch.set_defaults(func=run_batch)

    gate = sub.add_parser(
        "gate",
        help="CI gate: exit 0 when alignment is not predicted to fail, 1 when it is, 2 on an error",
        description="Screen one pair (locally, or on a server with --server) and decide whether alignment is "
        "predicted to fail. Policy 'paper': the paper's combined rule ΔNTK × log10(AGOP) > 2.5 (the AGOP rule "
        "when it is undetermined). Policy 'measured': the logistic model fitted on this deployment's labelled "
        "pairs (METRICS §8). Policy 'reported': the same model fitted on the outcomes training runs reported for "
        "the pair's stratum (`phasescreen outcome report`), falling back to 'measured' until 20 pairs with both "
        "outcomes are reported. Prints one line of why; --json prints the full result. Exit 0: not predicted to "
        "fail; 1: predicted to fail; 2: error (bad input, server unreachable, timeout, no verdict possible).",
    )
    gate.add_argument("--vision", required=True, help="vision model reference, e.g. timm:vit_base_patch16_224")
    gate.add_argument("--language", required=True, help="language model reference, e.g. hf:bert-base-uncased")
    gate.add_argument("--dataset", required=True, help="paired dataset, e.g. digits")
    _server_arguments(gate)
    gate.add_argument(
        "--policy", choices=["paper", "measured", "reported"], default="paper", help="decision policy"
    )
    gate.add_argument("--json", action="store_true", help="print the decision and the full result as JSON")
    gate.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to wait for the server's result")
    add_engine_arguments(gate)
    add_local_arguments(gate)
    gate.set_defaults(func=run_gate)

    report = sub.add_parser(
        "report",
        help="write a batch's figures (PNG, SVG) and HTML page",
        description="BATCH is a batch results JSON file (from `phasescreen batch`) or a batch id on the server "
        "given by --server. Writes phase_landscape, cross_alignment_heatmap, model_spectra and rule_verdicts "
        "as PNG and SVG, and index.html, into DIR.",
    )
    report.add_argument("batch", help="batch results JSON file, or a batch id on the server")
    report.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="directory to write")
    _server_arguments(report)
    report.set_defaults(func=run_report)

    study = sub.add_parser(
        "study",
        help="how well the paper's rules and a fitted model predict measured failure (METRICS §8)",
        description="Accuracy, AUROC and Brier score of each rule and of a logistic model under "
        "leave-one-model-out cross-validation, over every stored pair with ground truth (the local database, "
        "or the server's).",
    )
    _server_arguments(study)
    study.add_argument("--dataset", help="only pairs screened on this dataset")
    study.add_argument("--json", action="store_true", help="print the full study as JSON")
    study.set_defaults(func=run_study)


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("PHASESCREEN_SERVER") or None,
        metavar="URL",
        help="phasescreen server (default $PHASESCREEN_SERVER; unset: run locally)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("PHASESCREEN_API_KEY") or None,
        help="API key (default $PHASESCREEN_API_KEY)",
    )


def _client(args: argparse.Namespace) -> PhasescreenClient:
    from service.client import PhasescreenClient

    return PhasescreenClient(args.server, api_key=args.api_key)


def _error(command: str, message: object) -> int:
    print(f"phasescreen {command}: error: {one_line(message)}", file=sys.stderr)
    return ERROR


def one_line(message: object) -> str:
    """An error as one line: a settings validation error names the setting and what it must be."""
    from pydantic import ValidationError

    if isinstance(message, ValidationError):
        errors = message.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        return f"invalid settings: {where}: {errors[0]['msg'] if errors else message}"
    return " ".join(str(message).split())


def _expected_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from phasecore.errors import PhasescreenError
    from service.client import ApiError

    return (PhasescreenError, ApiError, ValidationError, ValueError, OSError)


# --- batch ----------------------------------------------------------------------------------------------


class _PairProgress:
    """A bar over pairs on a terminal, one line per finished pair otherwise; silent with --quiet."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="pairs", unit="pair", file=sys.stderr, dynamic_ncols=True)

    def stage(self, stage: str, fraction: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{stage} {fraction:.0%}", refresh=False)

    def finished(self, done: int, line: str) -> None:
        if self.quiet or done <= self.done:
            return
        if self.bar is not None:
            self.bar.update(done - self.done)
        else:
            print(f"[{done}/{self.total}] {line}", file=sys.stderr, flush=True)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_batch(args: argparse.Namespace) -> int:
    from phasecore.screening.batch import load_grid

    try:
        grid = load_grid(args.grid)
        settings = grid.settings(engine_overrides(args))
    except _expected_errors() as exc:
        return _error("batch", exc)
    try:
        run = _batch_on_server if args.server else _batch_here
        document = run(args, grid, settings)
    except KeyboardInterrupt:
        return _error("batch", "interrupted")
    except _expected_errors() as exc:
        return _error("batch", exc)
    return _finish_batch(args, document)


def _batch_here(args: argparse.Namespace, grid: Any, settings: Any) -> dict[str, Any]:
    from phasecore.screening.batch_run import run_grid
    from phasecore.sources import resolve_device
    from store.models import jsonable
    from store.settings import ServiceSettings

    service_settings = ServiceSettings()
    device = local_device(args)
    resolve_device(device)  # an unusable device is a usage error (exit 2), not a failure of every pair
    progress = _PairProgress(grid.n_pairs, quiet=args.quiet)
    count = 0

    def on_pair(entry: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        progress.finished(count, f"{entry['vision']} × {entry['language']}: {entry['state']}")

    try:
        document = run_grid(
            grid,
            settings,
            cache=profile_cache(args),
            model_root=service_settings.model_root,
            data_root=service_settings.data_root,
            progress=progress.stage,
            on_pair=on_pair,
            device=device,
        )
    finally:
        progress.close()
    stored: dict[str, Any] = jsonable(document)  # JSON has no inf or NaN: they read as null, as in the database
    if not args.no_store:
        _store_locally(stored)
    return stored


def _store_locally(document: dict[str, Any]) -> None:
    """Record every succeeded pair in the local database, so that `phasescreen study` counts it."""
    try:
        from jobs.screenings import record_local_result
        from store.db import local_session

        with local_session() as session:
            for pair in document["pairs"]:
                if pair["state"] != "succeeded":
                    continue
                request = {
                    "vision": pair["vision"],
                    "language": pair["language"],
                    "dataset": document["dataset"],
                    "options": document["options"],
                }
                pair["screening_id"] = record_local_result(session, request, pair["result"]).id
            session.commit()
    except Exception as exc:  # the results are written to a file anyway; storing them is a convenience
        print(f"warning: results not stored in the local database: {exc}", file=sys.stderr)


def _batch_on_server(args: argparse.Namespace, grid: Any, settings: Any) -> dict[str, Any]:
    request = {
        "vision": list(grid.vision),
        "language": list(grid.language),
        "dataset": grid.dataset,
        "options": settings,
        "name": grid.name,
    }
    with _client(args) as client:
        batch = client.submit_batch(request)
        print(f"batch {batch.id} on {client.base_url}{batch.href}", file=sys.stderr, flush=True)
        progress = _PairProgress(batch.pairs["total"], quiet=args.quiet)

        def on_progress(current: Any) -> None:
            finished = sum(current.pairs[s] for s in ("succeeded", "failed", "cancelled"))
            progress.stage(f"{current.profiles['succeeded']}/{current.profiles['total']} profiles", current.progress)
            progress.finished(finished, f"{current.pairs['succeeded']} succeeded, {current.pairs['failed']} failed")

        try:
            client.wait_for_batch(batch.id, timeout=args.timeout, on_progress=on_progress)
        finally:
            progress.close()
        return client.batch_results(batch.id)


def _finish_batch(args: argparse.Namespace, document: dict[str, Any]) -> int:
    from phasecore.screening.batch import summary_table, to_csv

    output = args.output or Path(f"{document.get('name') or args.grid.stem}.results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(to_csv(document))
    print(summary_table(document))
    print(f"results: {output}" + (f", {args.csv}" if args.csv else ""))
    if args.report:
        from phasecore.presentation.report import write_report

        paths = write_report(document, args.report)
        print(f"report: {paths[-1]}")
    return PASS if document["state"] == "succeeded" else FAIL


# --- gate -----------------------------------------------------------------------------------------------


def run_gate(args: argparse.Namespace) -> int:
    """Exit 0 / 1 / 2 with one line of why; every error is a 2, never a 1."""
    try:
        return _gate(args)
    except KeyboardInterrupt:
        return _gate_error(args, "interrupted")
    except _expected_errors() as exc:
        return _gate_error(args, exc)
    except Exception as exc:  # a CI gate must not turn a crash into a verdict
        return _gate_error(args, f"unexpected {type(exc).__name__}: {exc}")


def _gate_error(args: argparse.Namespace, message: object) -> int:
    if args.json:
        print(json.dumps({"exit_code": ERROR, "error": one_line(message)}))
    return _error("gate", message)


def _gate(args: argparse.Namespace) -> int:
    from phasecore.settings import EngineSettings
    from phasecore.study.gate import decide, require_policy_model
    from store.models import jsonable

    settings = EngineSettings.model_validate(engine_overrides(args))
    screening_id = None
    study: dict[str, Any] | None = None
    if args.server:
        with _client(args) as client:
            if args.policy in ("measured", "reported"):  # before any screening: without a model, no verdict
                study = client.study().model_dump(mode="json")
                require_policy_model(study, args.policy)
            submitted = client.submit_screening(
                args.vision, args.language, args.dataset, settings.model_dump(mode="json")
            )
            screening = client.wait_for_screening(submitted.id, timeout=args.timeout)
            screening_id = screening.id
            if screening.state != "succeeded":
                detail = (screening.problem.detail if screening.problem else None) or "no reason given"
                return _gate_error(args, f"screening {screening.id} {screening.state}: {detail}")
            if screening.result is None:
                return _gate_error(args, f"screening {screening.id} succeeded without a result")
            result = screening.result.model_dump(mode="json")
    else:
        if args.policy in ("measured", "reported"):
            study = _local_study().model_dump(mode="json")
            require_policy_model(study, args.policy)
        typed = screen_locally(args, settings, device=local_device(args), command="gate")
        result = typed.model_dump(mode="json")
        screening_id = store_screening(args, settings, typed)  # the verdict does not depend on storing
    decision = decide(result, args.policy, study=study)
    verdict = "FAIL" if decision.predicts_failure else "PASS"
    line = f"{verdict}: {decision.reason} [{args.vision} × {args.language} on {args.dataset}]"
    if args.json:
        print(
            json.dumps(
                {
                    "exit_code": decision.exit_code,
                    "decision": decision.to_dict(),
                    "vision": args.vision,
                    "language": args.language,
                    "dataset": args.dataset,
                    "screening_id": screening_id,
                    "result": jsonable(result),
                },
                allow_nan=False,
            )
        )
        print(line, file=sys.stderr)
    else:
        print(line)
    return decision.exit_code


def _local_study(dataset: str | None = None) -> StudyOut:
    """The study of the local database, typed as ``GET /v1/study`` serves it."""
    from store.db import local_session
    from store.records import run_study

    with local_session() as session:
        return run_study(session, dataset=dataset)


# --- report ---------------------------------------------------------------------------------------------


def run_report(args: argparse.Namespace) -> int:
    from phasecore.presentation.report import write_report
    from phasecore.screening.batch import check_document

    path = Path(args.batch)
    try:
        if path.is_file():
            document = check_document(json.loads(path.read_text()), origin=str(path))
        elif args.server:
            with _client(args) as client:
                document = check_document(client.batch_results(args.batch), origin=f"batch {args.batch}")
        else:
            return _error(
                "report",
                f"{args.batch!r} is not a batch results file here; for a batch id, name its server with --server "
                "(or $PHASESCREEN_SERVER)",
            )
        paths = write_report(document, args.output)
    except json.JSONDecodeError as exc:
        return _error("report", f"{path} is not JSON: {exc}")
    except _expected_errors() as exc:
        return _error("report", exc)
    for written in paths:
        print(written)
    return PASS


# --- study ----------------------------------------------------------------------------------------------


def run_study(args: argparse.Namespace) -> int:
    try:
        if args.server:
            with _client(args) as client:
                study = client.study(args.dataset).model_dump(mode="json")
        else:
            study = _local_study(args.dataset).model_dump(mode="json")
    except _expected_errors() as exc:
        return _error("study", exc)
    if args.json:
        print(json.dumps(study, indent=1, allow_nan=False))
    else:
        print(study_summary(study))
    return PASS


def _num(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def study_summary(study: dict[str, Any]) -> str:
    """The study in words and one small table per stratum (claimed accuracies labelled as the paper's claims).

    Figures compare only within a stratum (same dataset, settings and metrics version), so each stratum gets
    its own block; a study without strata (no stored version-2 pair, or an older server) prints its top level.
    A study with a ``shipped_evidence`` key (``store.records.run_study``, ``GET /v1/study``) prints two labelled
    parts: the deployment's own stored pairs, then the shipped evidence (or that none is installed)."""
    if "shipped_evidence" not in study:
        return "\n".join([_own_summary(study), *_reported_summary(study)])
    own = _own_summary(study).replace("\n", "\n  ")
    lines = [
        f"deployment's own stored pairs (source: {study.get('source') or 'deployment'}; label_source "
        f"{study.get('label_source') or 'measured'}: the screenings' own outcome, METRICS §7):",
        f"  {own}",
        *_reported_summary(study),
    ]
    shipped = study.get("shipped_evidence")
    if not shipped:
        lines.append("shipped evidence: none installed (measured figures come from the stored pairs only)")
        return "\n".join(lines)
    lines.append(
        f"shipped evidence (source: shipped evidence; created {shipped.get('created_at')}, commit "
        f"{shipped.get('commit') or 'unknown'}, command {shipped.get('command') or 'unknown'}; "
        f"{shipped.get('n_records')} records; never pooled with the stored pairs):"
    )
    if not shipped.get("strata"):
        lines.append("  no stratum of the shipped evidence matches")
    else:
        from phasecore.study.evidence import non_default_options

        for entry in shipped["strata"]:
            options = non_default_options((entry.get("stratum") or {}).get("settings") or {})
            words = ", ".join(f"{name}={value}" for name, value in sorted(options.items())) or "the defaults"
            lines.append(
                f"  stratum {str(entry['stratum'].get('key'))[:12]}: a request on dataset "
                f"{entry['stratum'].get('dataset')} with options {words} falls in it"
            )
        lines.append("  " + _own_summary({**shipped, "excluded_version_1": 0}).replace("\n", "\n  "))
    return "\n".join(lines)


def _reported_summary(study: dict[str, Any]) -> list[str]:
    """The reported labels' block: per reported stratum, the proxy outcome against the reported one, the
    AUROC of each predictor on both label sources side by side with n, and the full figures."""
    reported = study.get("reported")
    if reported is None:
        return []
    lines = [
        f"reported outcomes of training runs (label_source reported; {reported['label_rule']}): "
        f"{reported['n_outcomes']} runs reported, {reported['n_records']} labelled pairs"
    ]
    strata = reported.get("strata") or []
    if not strata:
        lines.append("  none yet: report a run with `phasescreen outcome report SCREENING_ID --metric ...`")
    measured = {entry["stratum"]["key"]: entry for entry in study.get("strata") or []}
    for entry in strata:
        stratum = entry["stratum"]
        proxy = measured.get(stratum.get("proxy_key")) or {}
        lines.append(
            f"  stratum {str(stratum['key'])[:12]} — {stratum.get('reported_metric')} on "
            f"{stratum.get('reported_dataset')}, proxy stratum {str(stratum.get('proxy_key'))[:12]} (dataset "
            f"{stratum.get('dataset')})"
        )
        agreement = entry["agreement"]
        lines.append(f"    {'proxy outcome':14s} {'reported success':>16s} {'reported failure':>16s}")
        for name, row in agreement["table"].items():
            lines.append(f"    {name:14s} {row['success']:16d} {row['failure']:16d}")
        lines.append(
            f"    agreement over the {agreement['n_both_decided']} pairs both decide: "
            f"{_num(agreement['agreement'])} (Cohen's κ {_num(agreement['cohen_kappa'], '.2f')})"
        )
        lines.append(
            f"    AUROC side by side: measured labels over the proxy stratum's n = {proxy.get('n', 0)} decided pairs, "
            f"reported labels over n = {entry['n']} pairs"
        )
        reported_auroc = _aurocs(entry)
        measured_auroc = _aurocs(proxy)
        for name in [*reported_auroc, *(name for name in measured_auroc if name not in reported_auroc)]:
            lines.append(
                f"      {name:22s} measured {_num(measured_auroc.get(name)):>6s}  "
                f"reported {_num(reported_auroc.get(name)):>6s}"
            )
        lines.append("    " + _stratum_block(entry).replace("\n", "\n    "))
    return lines


def _aurocs(entry: dict[str, Any]) -> dict[str, Any]:
    """Each predictor's AUROC in one stratum's figures: the rules, then the logistic model (empty when
    insufficient)."""
    aurocs = {name: quality.get("auroc") for name, quality in (entry.get("rules") or {}).items()}
    if entry.get("logistic"):
        aurocs["logistic (LOMO CV)"] = entry["logistic"].get("auroc")
    return aurocs


def _own_summary(study: dict[str, Any]) -> str:
    lines: list[str] = []
    excluded = study.get("excluded_version_1")
    if excluded:
        lines.append(f"{excluded} stored result(s) of METRICS version 1 left out (figures compare within one version)")
    strata = study.get("strata") or []
    if not strata:
        return "\n".join([*lines, _stratum_block(study)])
    for entry in strata:
        stratum = entry.get("stratum") or {}
        lines.append(
            f"stratum {str(stratum.get('key'))[:12]} — dataset {stratum.get('dataset')}, metrics version "
            f"{stratum.get('metrics_version')}"
        )
        lines.append("  " + _stratum_block(entry).replace("\n", "\n  "))
    return "\n".join(lines)


def _stratum_block(study: dict[str, Any]) -> str:
    base = study.get("failure_base_rate")
    inconclusive = study.get("n_inconclusive") or 0
    lines = [
        f"{study['n']} decided pairs ({study['n_models']['vision']} vision, {study['n_models']['language']} "
        f"language models), {study['n_failed']} failed (base rate {_num(base)}), {inconclusive} inconclusive "
        f"left out; {study['cv']}",
    ]
    if study["status"] != "ok":
        lines.append(f"insufficient: {study['reason']}")
        return "\n".join(lines)
    lines.append(
        f"{'predictor':22s} {'n':>4s} {'accuracy':>8s} {'AUROC':>6s} {'Brier':>6s} {'ρ':>6s} {'CV thr':>8s} "
        f"{'CV acc':>6s}  paper's claim"
    )
    for rule, quality in (study.get("rules") or {}).items():
        claim = _num(quality.get("claimed_accuracy"), ".2f") if quality.get("claimed_accuracy") else "-"
        rho = (quality.get("spearman_rho") or {}).get("rho")
        cv = quality.get("cv_threshold") or {}
        lines.append(
            f"{rule:22s} {quality['n']:4d} {_num(quality['accuracy']):>8s} {_num(quality['auroc']):>6s} "
            f"{_num(quality['brier']):>6s} {_num(rho, '.2f'):>6s} {_num(cv.get('threshold'), '.3g'):>8s} "
            f"{_num(cv.get('held_out_accuracy')):>6s}  {claim}"
        )
    logistic = study.get("logistic") or {}
    if logistic:
        lines.append(
            f"{'logistic (LOMO CV)':22s} {logistic['n']:4d} {_num(logistic['accuracy']):>8s} "
            f"{_num(logistic['auroc']):>6s} {_num(logistic['brier']):>6s} {'-':>6s} {'-':>8s} {'-':>6s}  -"
        )
    if inconclusive:
        lines.append("with the inconclusive pairs counted as failed … as aligned (accuracy, AUROC, Brier):")
        for name, quality in [*(study.get("rules") or {}).items(), ("logistic", logistic)]:
            ends = (quality or {}).get("range_if_inconclusive") or {}
            failed, aligned = ends.get("as_failed") or {}, ends.get("as_aligned") or {}
            lines.append(
                f"  {name:20s} "
                + "  ".join(
                    f"{_num(failed.get(key))}…{_num(aligned.get(key))}" for key in ("accuracy", "auroc", "brier")
                )
            )
    lines.append("Brier scores of the rules treat their verdicts as 0/1 forecasts (= 1 − accuracy)")
    return "\n".join(lines)
