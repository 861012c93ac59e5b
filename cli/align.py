"""``phasescreen align`` (one pair's alignment training, scored on held-out values) and ``phasescreen phase-aware``
(the Table 2 experiment of issue 22, its results written into docs/phase-aware.md): docs/phase-aware.md."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phasecore.training import METHODS as METHOD_NAMES

OK, USAGE = 0, 2
DEFAULT_DOC, DEFAULT_FIGURES = Path("docs/phase-aware.md"), Path("docs/phase-aware")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "align",
        help="train one pair's alignment (linear heads, InfoNCE) with a phase-aware method; score held-out values",
        description="Alignment training of a vision-language pair: linear projection heads to a shared space, the "
        "symmetric InfoNCE loss on the training classes, scored on held-out values (METRICS §7) at a logarithmic "
        "grid of examples seen; one of the paper's Table 2 methods sets the towers' learning rates "
        "(docs/phase-aware.md). Exit 0 on success, 2 on a usage or input error.",
    )
    p.add_argument("--vision", required=True, help="vision encoder, e.g. zoo:shapes?tower=vision&mode=unimodal")
    p.add_argument("--language", required=True, help="language encoder, e.g. zoo:shapes?tower=text&mode=unimodal")
    p.add_argument("--dataset", help="paired dataset (default shapes?colors=10&shapes=8&size=32)")
    p.add_argument("--method", choices=METHOD_NAMES, default="fixed", help="Table 2 method (default fixed)")
    p.add_argument("--train", help="what trains: heads | all | last:K (default all)")
    p.add_argument("--examples", type=int, help="training examples per fold (default 32768)")
    p.add_argument("--batch", type=int, help="batch size (default 128)")
    p.add_argument("--lr", type=float, help="η0, Adam's constant learning rate (default 1e-3)")
    p.add_argument("--folds", type=int, help="folds of held-out groups, one training each (default 3)")
    p.add_argument("--seed", type=int, help="heads' initialisation and batch order (default 0)")
    p.add_argument("--n-train", type=int, help="training pairs (default 8000)")
    p.add_argument("--n-eval", type=int, help="evaluation pairs (default 960)")
    p.add_argument("--per-doubling", type=int, help="checkpoints per doubling of examples (default 2)")
    p.add_argument("--tau", type=float, help="τ of the §7 outcome test (default 0.2)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default 1)")
    add_method_arguments(p)
    p.add_argument("--output", "-o", type=Path, help="where to write the run's JSON record")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run_align)

    e = sub.add_parser(
        "phase-aware",
        help="the Table 2 experiment: the paper's phase-aware methods on zoo pairs, into docs/phase-aware.md",
        description="Trains unimodal and random zoo starting pairs (several seeds) with each Table 2 method, the "
        "jointly trained pair as the ceiling, screens every starting pair first, and writes results JSON, a figure "
        "and the tables of docs/phase-aware.md. Finished runs are cached under --cache and skipped when run again.",
    )
    e.add_argument("--preset", choices=("full", "smoke"), default="full", help="full (about 1 h) or smoke (minutes)")
    e.add_argument("--cache", type=Path, help="cache folder of runs and screenings (default .phase-aware/<preset>)")
    e.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    e.add_argument("--starts", help="comma-separated starting pairs among unimodal,random")
    e.add_argument("--methods", help=f"comma-separated methods among {','.join(METHOD_NAMES)}")
    e.add_argument("--width", type=int, help="zoo tower width")
    e.add_argument("--examples", type=int, help="training examples per fold")
    e.add_argument("--folds", type=int, help="folds of held-out groups")
    e.add_argument("--threads", type=int, help="torch intra-op threads of the training (default 1)")
    e.add_argument("--every", type=int, help="steps between S_NTK measurements (adaptive, regulariser)")
    e.add_argument("--no-screen", action="store_true", help="skip the screening of the starting pairs")
    e.add_argument("--no-ceiling", action="store_true", help="skip the joint pair")
    e.add_argument("--output", "-o", type=Path, help="results JSON (default <cache>/results.json)")
    e.add_argument(
        "--doc", type=Path, help=f"page whose results section is rewritten (default {DEFAULT_DOC} for the full preset)"
    )
    e.add_argument("--no-doc", action="store_true", help="write no page")
    e.add_argument(
        "--figures", type=Path, help=f"figure folder (default {DEFAULT_FIGURES} with the page, else <cache>/figures)"
    )
    e.add_argument("--dry-run", action="store_true", help="print the plan and its estimated duration only")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bars (one line per run still)")
    e.set_defaults(func=run_phase_aware)


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--every", type=int, help="steps between S_NTK measurements (adaptive, regulariser; default 32)")
    p.add_argument("--lam", type=float, help="regulariser λ: log10 α moved per unit phase gap (default 2)")
    p.add_argument("--target", type=float, help="compatible init's S_NTK target (default 0.6)")
    p.add_argument("--probe-subset", type=int, help="S_NTK probe subset n_s (default 32)")
    p.add_argument("--probe-steps", type=int, help="S_NTK probe steps T (default 10)")


def _given(args: argparse.Namespace, mapping: Mapping[str, str]) -> dict[str, Any]:
    """{setting: value} of the flags given (``mapping``: flag dest -> setting name)."""
    return {field: getattr(args, dest) for dest, field in mapping.items() if getattr(args, dest, None) is not None}


def _settings(args: argparse.Namespace) -> tuple[Any, Any]:
    from dataclasses import replace

    from phasecore.training.align import AlignSettings
    from phasecore.training.methods import MethodSpec, ProbeSettings

    probe = ProbeSettings(**_given(args, {"probe_subset": "subset", "probe_steps": "steps"}))
    settings = AlignSettings(
        probe=probe,
        **_given(
            args,
            {
                "dataset": "dataset", "train": "train", "examples": "examples", "batch": "batch", "lr": "lr",
                "folds": "folds", "seed": "seed", "n_train": "n_train", "n_eval": "n_eval",
                "per_doubling": "per_doubling", "tau": "failure_threshold", "threads": "threads",
            },
        ),  # fmt: skip
    )
    method = replace(MethodSpec(name=args.method), **_given(args, {"every": "every", "lam": "lam", "target": "target"}))
    return settings, method


class _Bar:
    """A tqdm bar over a run's steps with the loss and the last alignment_score; silent when disabled."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.bar = label, enabled, None

    def __call__(self, done: int, total: int, stats: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, leave=False, file=sys.stderr, unit="step")
        bar: Any = self.bar
        bar.n = done
        loss, alignment = stats.get("loss"), stats.get("alignment")
        shown = f"loss {'—' if loss is None else f'{loss:.3f}'}, "
        shown += f"alignment {'—' if alignment is None else f'{alignment:+.3f}'}"
        bar.set_postfix_str(shown, refresh=False)
        bar.refresh()
        if done >= total and stats.get("checkpoint"):
            bar.close()
            self.bar = None


def _checkpoint_printer(label: str) -> Any:
    """Without a terminal: one line per checkpoint."""

    def report(done: int, total: int, stats: Mapping[str, Any]) -> None:
        if stats.get("checkpoint"):
            loss = stats.get("loss")
            print(
                f"  {label} step {done}/{total} ({stats['examples']:,} examples): alignment_score "
                f"{stats['alignment']:+.3f} ({stats['outcome']}), loss {'—' if loss is None else f'{loss:.3f}'}",
                file=sys.stderr,
                flush=True,
            )

    return report


def run_align(args: argparse.Namespace) -> int:
    from phasecore.errors import PhasescreenError
    from phasecore.sources import load_encoder
    from phasecore.training.align import align_pair

    try:
        settings, method = _settings(args)
    except (TypeError, ValueError) as exc:
        print(f"phasescreen align: invalid settings: {exc}", file=sys.stderr)
        return USAGE
    try:
        vision, language = load_encoder(args.vision), load_encoder(args.language)
        tty = not args.quiet and sys.stderr.isatty()
        progress = _Bar("align", True) if tty else (None if args.quiet else _checkpoint_printer("align"))
        record = align_pair(vision, language, settings, method, progress=progress)
    except (PhasescreenError, ValueError) as exc:
        print(f"phasescreen align: {exc}", file=sys.stderr)
        return USAGE
    for point in record["checkpoints"]:
        rates = ", ".join(f"{side} ×{rate:.3g}" for side, rate in point["rate"].items() if rate is not None)
        loss = point["loss"]
        print(
            f"{point['examples']:>9,} examples: alignment_score {point['alignment_score']:+.3f} ({point['outcome']}), "
            f"loss {'—' if loss is None else f'{loss:.3f}'}, rates {rates}"
        )
    reached = ", ".join(
        f"≥ {t}: {'not reached' if e is None else f'{e:,} examples'}" for t, e in record["reached"].items()
    )
    costs = record["costs"]
    print(
        f"{record['method']['name']}: {reached}; training {costs['train_seconds']:.1f} s, S_NTK probes "
        f"{costs['n_probes']} in {costs['probe_seconds']:.1f} s, total {costs['total_seconds']:.1f} s"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
        print(f"record: {args.output}")
    return OK


def _split(text: str | None, cast: Any = str) -> tuple[Any, ...] | None:
    return None if text is None else tuple(cast(x.strip()) for x in text.split(",") if x.strip())


def experiment_config(args: argparse.Namespace) -> Any:
    """The preset with the flags given applied."""
    from dataclasses import replace

    from phasecore.training.experiment import PRESETS

    config = PRESETS[args.preset]
    align = replace(config.align, **_given(args, {"examples": "examples", "folds": "folds", "threads": "threads"}))
    method = replace(config.method, **_given(args, {"every": "every"}))
    changes: dict[str, Any] = {"align": align, "method": method}
    for key, cast in (("seeds", int), ("starts", str), ("methods", str)):
        value = _split(getattr(args, key), cast)
        if value is not None:
            changes[key] = value
    if args.width is not None:
        changes["width"] = args.width
    if args.no_screen:
        changes["screen"] = False
    if args.no_ceiling:
        changes["ceiling"] = False
    return replace(config, **changes)


def run_phase_aware(args: argparse.Namespace) -> int:
    from cli.evidence import git_commit
    from phasecore.errors import PhasescreenError
    from phasecore.presentation.phase_aware_page import write_doc, write_figure
    from phasecore.training.experiment import estimate_seconds, plan, run_experiment, run_key

    try:
        config = experiment_config(args)
    except (TypeError, ValueError) as exc:
        print(f"phasescreen phase-aware: invalid settings: {exc}", file=sys.stderr)
        return USAGE
    cache = args.cache or Path(".phase-aware") / config.preset
    doc = None if args.no_doc else (args.doc or (DEFAULT_DOC if config.preset == "full" else None))
    if doc is not None and args.doc is None and not doc.exists():
        print(f"phasescreen phase-aware: {doc} not found here (run from the checkout, or give --doc)", file=sys.stderr)
        doc = None
    figures = args.figures or (DEFAULT_FIGURES if doc is not None and args.doc is None else cache / "figures")
    output = args.output or cache / "results.json"
    if args.dry_run:
        runs = plan(config)
        cached = sum((cache / "runs" / f"{run_key(spec, config)}.json").is_file() for spec in runs)
        for spec in runs:
            print(f"{spec.start} seed {spec.seed} × {spec.method}: {' + '.join(spec.refs(config))}")
        estimate = estimate_seconds(config, cache)
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in estimate.items() if k != "total")
        print(f"{len(runs)} runs ({cached} cached); estimated {estimate['total'] / 60:.0f} min ({parts})")
        return OK
    tty = not args.quiet and sys.stderr.isatty()

    def progress_for(label: str) -> Any:
        if args.quiet:
            return None
        return _Bar(label, True) if tty else _checkpoint_printer(label)

    try:
        document = run_experiment(
            config, cache, log=lambda line: print(line, file=sys.stderr, flush=True), progress_for=progress_for
        )
    except (PhasescreenError, ValueError) as exc:
        print(f"phasescreen phase-aware: {exc}", file=sys.stderr)
        return USAGE
    document["command"] = _command(args)
    document["commit"] = git_commit(exclude=doc)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    written = write_doc(doc, document, figures) if doc is not None else write_figure(document, figures)
    for line in _summary_lines(document):
        print(line)
    print(f"results: {output}; wrote {', '.join(str(p) for p in written)}")
    return OK


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (the flags given, in a fixed order)."""
    words = ["phasescreen", "phase-aware", "--preset", args.preset]
    for flag in ("cache", "seeds", "starts", "methods", "width", "examples", "folds", "threads", "every"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag}", str(value)]
    words += [f"--{flag.replace('_', '-')}" for flag in ("no_screen", "no_ceiling") if getattr(args, flag)]
    return shlex.join(words)


def _median(summary: Mapping[str, Any]) -> str:
    return "not reached" if summary["median"] is None else f"{summary['median']:,.0f}"


def _summary_lines(document: Mapping[str, Any]) -> list[str]:
    from phasecore.presentation.phase_aware_page import ordering_lines

    lines = []
    for cell in document["summary"]["cells"]:
        reached = ", ".join(
            f"≥ {t}: median {_median(s)} ({s['reached']}/{s['n']})" for t, s in cell["reached"].items()
        )
        lines.append(f"{cell['start']:>8} × {cell['method']:<11} final {cell['final']['mean']:+.3f}; {reached}")
    return lines + [line.replace("**", "") for line in ordering_lines(document)]
