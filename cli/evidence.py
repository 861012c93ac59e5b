"""``phasescreen evidence write | check``: the shipped evidence file (phasecore.study.evidence, docs/evidence.md).

``write`` reads every stored pair of the local database (the embedded store, or ``$PHASESCREEN_DATABASE_URL``),
computes the study by stratum and writes the evidence file with the records it came from, the time, the git
commit and the command; ``make evidence`` calls it after screening the evidence grid into a clean store.
``check`` reads an evidence file, recomputes its study from its records and says whether they agree.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

OK, DIFFERENT, ERROR = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evidence = sub.add_parser(
        "evidence",
        help="write or check the shipped evidence file (the study shown as `measured` on a fresh install)",
        description="The shipped evidence: the study of an evidence run, written with its per-pair records, "
        "that results show as `predictions.<rule>.measured` (labelled 'shipped evidence') in its strata until "
        "the deployment's own decided pairs there reach 20. See docs/evidence.md.",
    )
    actions = evidence.add_subparsers(dest="evidence_command", metavar="ACTION")

    write = actions.add_parser(
        "write",
        help="write the evidence file from the pairs stored in the local database",
        description="Read every stored pair of the local database (optionally of one dataset), compute the "
        "study by stratum (METRICS §8) and write the evidence file: kind, format, metrics_version, created_at, "
        "commit, command, settings, study and records.",
    )
    write.add_argument(
        "--out", type=Path, required=True, help="the file to write, e.g. phasecore/study/evidence/shipped.json"
    )
    write.add_argument("--dataset", help="only pairs screened on this dataset")
    write.add_argument("--grid", type=Path, help="the grid YAML the pairs were screened from (recorded in settings)")
    write.add_argument(
        "--command",
        dest="run_command",
        help="the command that produced the pairs, recorded in the file (default: this command line)",
    )
    write.add_argument("--commit", help="the git commit to record (default: git rev-parse HEAD of this checkout)")
    write.set_defaults(func=run_write)

    doc = actions.add_parser(
        "doc",
        help="write the numbers section of docs/evidence.md and its figures from an evidence file and its run",
        description="Render the evidence file's study (each rule beside the paper's claim), every pair of the "
        "batch results JSON and the batch report's figures (dose-response among them) into the page, between "
        "its <!-- evidence:begin --> and <!-- evidence:end --> markers; the prose around them is left alone.",
    )
    doc.add_argument("--evidence", type=Path, required=True, help="the evidence file (phasescreen evidence write)")
    doc.add_argument("--results", type=Path, required=True, help="the batch results JSON of the evidence run")
    doc.add_argument("--page", type=Path, default=Path("docs/evidence.md"), help="the page (default docs/evidence.md)")
    doc.add_argument(
        "--figures", type=Path, default=Path("docs/evidence"), help="where the figures go (default docs/evidence/)"
    )
    doc.set_defaults(func=run_doc)

    check = actions.add_parser(
        "check",
        help="recompute an evidence file's study from its records and compare",
        description="Read an evidence file (default: the one results use, $PHASESCREEN_EVIDENCE_PATH or the "
        "package's), recompute its study from its records and list every figure that differs. Exit 0 when "
        "they agree, 1 when they differ, 2 when the file is missing or unusable.",
    )
    check.add_argument("path", nargs="?", type=Path, help="the evidence file (default: the one results use)")
    check.add_argument("--json", action="store_true", help="print the check as JSON")
    check.set_defaults(func=run_check)

    def usage(args: argparse.Namespace) -> int:
        evidence.print_help()
        return ERROR

    evidence.set_defaults(func=usage)


def run_write(args: argparse.Namespace) -> int:
    from phasecore import ENGINE_VERSION
    from phasecore.study.evidence import write_evidence
    from store.db import local_session
    from store.records import study_records

    try:
        settings: dict[str, Any] = {"engine_version": ENGINE_VERSION, "dataset_filter": args.dataset}
        if args.grid is not None:
            settings["grid"] = _grid_summary(args.grid)
        with local_session() as session:
            records = study_records(session, dataset=args.dataset)
        if not records:
            where = f" on dataset {args.dataset}" if args.dataset else ""
            raise ValueError(
                f"the local database holds no succeeded pair{where}; screen the grid into it first "
                "(phasescreen batch without --no-store, with the same PHASESCREEN_HOME)"
            )
        document = write_evidence(
            args.out,
            records,
            command=args.run_command or shlex.join(["phasescreen", *sys.argv[1:]]),
            settings=settings,
            commit=args.commit or git_commit(exclude=args.out),
        )
    except Exception as exc:  # a usage, store or file error: one line, exit 2
        print(f"phasescreen evidence write: error: {exc}", file=sys.stderr)
        return ERROR
    strata = document["study"]["strata"]
    print(f"wrote {args.out}: {len(document['records'])} records, {len(strata)} strata")
    for entry in strata:
        stratum = entry["stratum"]
        print(
            f"  stratum {stratum['key'][:12]} (dataset {stratum['dataset']}): {entry['n']} decided pairs, "
            f"{entry['n_inconclusive']} inconclusive, {entry['status']}"
        )
    return OK


def run_doc(args: argparse.Namespace) -> int:
    from phasecore.presentation.evidence_page import write_doc
    from phasecore.study.evidence import read_evidence

    try:
        evidence = read_evidence(args.evidence)
        document = json.loads(args.results.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or "pairs" not in document:
            raise ValueError(f"{args.results} is not a batch results JSON (no 'pairs')")
        written = write_doc(args.page, evidence, document, args.figures)
    except Exception as exc:  # a missing or unusable file: one line, exit 2
        print(f"phasescreen evidence doc: error: {exc}", file=sys.stderr)
        return ERROR
    print(f"wrote {args.page} and {len(written) - 1} figure files under {args.figures}")
    return OK


def run_check(args: argparse.Namespace) -> int:
    from phasecore.study.evidence import EvidenceError, evidence_path, read_evidence, verify_evidence

    path = args.path or evidence_path()
    try:
        document = read_evidence(path)
        differences = verify_evidence(document)
    except EvidenceError as exc:
        print(f"phasescreen evidence check: error: {exc}", file=sys.stderr)
        return ERROR
    summary = {
        "path": str(path),
        "created_at": document["created_at"],
        "commit": document.get("commit"),
        "command": document.get("command"),
        "records": len(document["records"]),
        "strata": [
            {"key": e["stratum"]["key"], "dataset": e["stratum"].get("dataset"), "n": e["n"], "status": e["status"]}
            for e in document["study"]["strata"]
        ],
        "agrees": not differences,
        "differences": differences,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"{path}: created {summary['created_at']}, commit {summary['commit']}, {summary['records']} records, "
            f"{len(summary['strata'])} strata"
        )
        for line in differences[:50]:
            print(f"  differs: {line}")
        print("the study recomputed from the records agrees" if not differences else f"{len(differences)} differ")
    return OK if not differences else DIFFERENT


def git_commit(*, exclude: Path | None = None) -> str | None:
    """HEAD of the checkout this code runs from, with "-dirty" when tracked files other than ``exclude``
    differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
        if exclude is not None and exclude.resolve().is_relative_to(root):
            status.append(f":(exclude){exclude.resolve().relative_to(root)}")
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty.strip() else head or None


def _grid_summary(path: Path) -> dict[str, Any]:
    import yaml

    grid = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {
        "file": path.name,
        **{key: grid.get(key) for key in ("name", "dataset", "options", "vision", "language")},
    }
