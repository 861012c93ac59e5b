"""The Table 2 experiment (issue 22): do the paper's phase-aware methods rescue a failing pair, and in what order?

Starting pairs are zoo towers (docs/zoo.md) of one width: **unimodal** (each tower trained alone on class labels:
the paper's "independently pretrained" case) and **random** (untrained), one pair per seed, and the **joint** pair
(trained together, aligned by construction) as the ceiling. Each starting pair is trained by ``align_pair`` with
each method of ``methods.METHODS`` at the same budget; the joint pair with the fixed rate. Before training, every
starting pair is screened by the engine's local pipeline (``screening.pipeline.screen``: rules, S_cross, phases
and the §7 proxy), so the page can set what the screen said beside what training did.

Every run and every screening is cached as one JSON file under the cache folder (``runs/<key>.json``,
``screens/<key>.json``, profiles under ``profiles/``), the key a hash of everything that changes its numbers
(``run_key``): a second invocation skips what is done, an interrupted one resumes. Zoo towers are trained into
the zoo's own cache (``$PHASESCREEN_HOME/zoo``) on first use. ``run_experiment`` returns the results document
(``summarise`` adds the tables' figures); ``phasecore.presentation.phase_aware_page`` writes its markdown and figure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from phasecore.host import cpu_model
from phasecore.references.refs import ModelRef
from phasecore.training.align import DATASET, AlignSettings, ProgressFn, align_pair
from phasecore.training.methods import METHODS, PAPER_ORDER, MethodSpec, ProbeSettings

#: part of every run's cache key: raise it when a change to the trainer or the methods moves numbers
EXPERIMENT_VERSION = "1"
STARTS: tuple[str, ...] = ("unimodal", "random")
CEILING = "joint"

#: The paper's Table 2, as claimed (not verified): examples needed to reach its alignment, and that alignment.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "fixed": {"examples": 400e6, "alignment": 0.018},
    "adaptive": {"examples": 45e6, "alignment": 0.031},
    "regulariser": {"examples": 20e6, "alignment": 0.042},
    "compatible": {"examples": 6.7e6, "alignment": 0.086},
}

# Cost model of ``estimate_seconds``, measured on the project's 2-core VM under load from another session (one
# torch thread): one training step of one fold at width 16 (both towers and heads, batch 128), one S_NTK probe
# (n_s = 32, T = 10, M = 1; the mean of a vision and a text probe), one screening at N = 480 (both profiles and the
# pair step). Both step and probe scale about with width².
STEP_SECONDS_W16 = 0.116
PROBE_SECONDS_W16 = 0.35
SCREEN_SECONDS_N480 = 47.0
SETUP_SECONDS = 6.0  # per run: preprocessing the 8,000 training pairs, standardisation, heads


@dataclass(frozen=True)
class ExperimentConfig:
    """What the experiment runs. ``align``'s ``seed`` is replaced by each run's seed; ``method``'s ``name`` by
    each method (its other knobs are shared). ``tower_steps``: the zoo training steps of the unimodal and joint
    towers; ``screen_n``/``screen_probes``/``screen_folds``/``screen_subset``: the screening's N, output probes
    M, ground-truth folds and stability subset n_s (METRICS' T = 10 and c = 1)."""

    preset: str = "full"
    dataset: str = DATASET
    width: int = 16
    tower_steps: int = 300
    seeds: tuple[int, ...] = (0, 1, 2)
    starts: tuple[str, ...] = STARTS
    methods: tuple[str, ...] = METHODS
    ceiling: bool = True
    align: AlignSettings = field(default_factory=AlignSettings)
    method: MethodSpec = field(default_factory=MethodSpec)
    screen: bool = True
    screen_n: int = 480
    screen_probes: int = 1
    screen_folds: int = 5
    screen_subset: int = 128

    def __post_init__(self) -> None:
        if not self.seeds or any(s not in STARTS for s in self.starts) or any(m not in METHODS for m in self.methods):
            raise ValueError(f"need ≥ 1 seed, starts among {STARTS} and methods among {METHODS}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["align"] = self.align.to_dict()
        for key in ("seeds", "starts", "methods"):
            out[key] = list(out[key])
        return out


#: ``full``: the configuration of docs/phase-aware.md (about an hour on the 2-core VM; ``estimate_seconds``);
#: ``smoke``: the same pipeline at a toy size (a couple of minutes), to check it end to end.
PRESETS: dict[str, ExperimentConfig] = {
    "full": ExperimentConfig(),
    "smoke": ExperimentConfig(
        preset="smoke",
        width=4,
        tower_steps=20,
        seeds=(0,),
        align=AlignSettings(
            examples=8 * 64, batch=64, n_train=1600, n_eval=160, probe=ProbeSettings(subset=8, steps=3)
        ),
        method=MethodSpec(every=4, per_decade=1, refine=1),
        screen_n=160,
        screen_folds=2,
        screen_subset=32,
    ),
}


def pair_refs(start: str, seed: int, width: int, steps: int) -> tuple[str, str]:
    """The canonical zoo references of a starting pair (``unimodal``, ``random``) or of the joint ceiling."""
    if start == "unimodal":
        query = f"mode=unimodal&seed={seed}&steps={steps}&width={width}"
    elif start == "random":
        query = f"mode=random&seed={seed}&width={width}"
    elif start == CEILING:
        query = f"seed={seed}&steps={steps}&width={width}"
    else:
        raise ValueError(f"unknown start {start!r}")
    return tuple(  # type: ignore[return-value]  # two references, vision then text
        ModelRef.parse(f"zoo:shapes?tower={tower}&{query}").canonical() for tower in ("vision", "text")
    )


@dataclass(frozen=True)
class RunSpec:
    start: str
    seed: int
    method: str

    def refs(self, config: ExperimentConfig) -> tuple[str, str]:
        return pair_refs(self.start, self.seed, config.width, config.tower_steps)

    def settings(self, config: ExperimentConfig) -> tuple[AlignSettings, MethodSpec]:
        return replace(config.align, seed=self.seed), replace(config.method, name=self.method)


def plan(config: ExperimentConfig) -> list[RunSpec]:
    """Every run, starting pairs by seed and method, then the ceiling (the joint pair of the first seed)."""
    runs = [RunSpec(start, seed, m) for start in config.starts for seed in config.seeds for m in config.methods]
    if config.ceiling:
        runs.append(RunSpec(CEILING, config.seeds[0], "fixed"))
    return runs


def _hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def run_key(spec: RunSpec, config: ExperimentConfig) -> str:
    """Hash of what changes a run's numbers: the pair's references, the training settings, the method's knobs,
    the experiment version."""
    vision, language = spec.refs(config)
    settings, method = spec.settings(config)
    return _hash(
        {"version": EXPERIMENT_VERSION, "vision": vision, "language": language, "settings": settings.to_dict(),
         "method": method.to_dict()}
    )  # fmt: skip


def _screen_settings(config: ExperimentConfig) -> Any:
    from phasecore.settings import EngineSettings

    return EngineSettings(
        n=config.screen_n, probes=config.screen_probes, gt_folds=config.screen_folds,
        stability_subset=config.screen_subset, failure_threshold=config.align.failure_threshold,
    )  # fmt: skip


def screen_path(start: str, seed: int, config: ExperimentConfig, cache: Path) -> Path:
    """The cache file of a starting pair's screening (its key: the pair, the dataset, the engine settings)."""
    vision, language = pair_refs(start, seed, config.width, config.tower_steps)
    settings = _screen_settings(config).model_dump(mode="json")
    key = _hash({"vision": vision, "language": language, "dataset": config.dataset, "settings": settings})
    return cache / "screens" / f"{key}.json"


def screen_starting_pair(start: str, seed: int, config: ExperimentConfig, cache: Path) -> dict[str, Any]:
    """The screening of a starting pair (cached): the figures the page sets beside training."""
    from phasecore.screening.pipeline import ProfileCache, screen

    vision, language = pair_refs(start, seed, config.width, config.tower_steps)
    settings = _screen_settings(config)
    path = screen_path(start, seed, config, cache)
    if path.is_file():
        return dict(json.loads(path.read_text()))
    tick = time.perf_counter()
    with warnings.catch_warnings():  # scikit-learn's note on few pairs per class in the §7 linear probes
        warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
        result = screen(vision, language, config.dataset, settings, cache=ProfileCache(cache / "profiles"))
    m, gt = result.metrics, result.ground_truth
    null = m.s_ntk_cross_centered_null
    summary = {
        "start": start,
        "seed": seed,
        "vision": vision,
        "language": language,
        "settings": settings.model_dump(mode="json"),
        "s_ntk_vision": m.s_ntk_vision,
        "s_ntk_language": m.s_ntk_language,
        "phase_vision": m.phase_vision,
        "phase_language": m.phase_language,
        "delta_ntk": m.delta_ntk,
        "s_ntk_cross": m.s_ntk_cross,
        "s_ntk_cross_centered": m.s_ntk_cross_centered,
        "s_ntk_cross_centered_p": null.p_value,
        "cka": m.cka,
        "mutual_knn": m.mutual_knn,
        "agop_ratio_vision": m.agop_ratio_vision,
        "agop_ratio_language": m.agop_ratio_language,
        "combined": m.combined,
        "predictions": {name: rule.predicts_failure for name, rule in result.predictions.items()},
        "proxy_alignment_score": None if gt is None else gt.alignment_score,
        "proxy_outcome": None if gt is None else gt.outcome,
        "seconds": round(time.perf_counter() - tick, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary


def machine() -> dict[str, Any]:
    """Where it ran: CPU model, cores, memory, load, Python and torch."""
    import torch

    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def estimate_seconds(config: ExperimentConfig, cache: Path | None = None) -> dict[str, float]:
    """A rough duration of the runs not yet cached, from the cost model above (seconds, by part)."""
    from phasecore.zoo.train import run_folder

    scale = (config.width / 16) ** 2
    steps, folds = config.align.steps, config.align.folds
    batch_scale = config.align.batch / 128
    parts = {"training": 0.0, "probes": 0.0, "setup": 0.0, "screening": 0.0, "zoo towers": 0.0}
    for spec in plan(config):
        if cache is not None and (cache / "runs" / f"{run_key(spec, config)}.json").is_file():
            continue
        parts["training"] += steps * folds * STEP_SECONDS_W16 * scale * batch_scale
        parts["setup"] += SETUP_SECONDS * config.align.n_train / 8000
        n_probes = 0
        if spec.method in ("adaptive", "regulariser"):
            n_probes = 2 * folds * math.ceil(steps / config.method.every)  # steps 0, k, 2k, ... below the last
        elif spec.method == "compatible":
            n_probes = 2 * folds * (4 + config.method.refine)  # a typical search: 4 grid points, then bisection
        probe_scale = config.align.probe.subset / 32 * config.align.probe.steps / 10
        parts["probes"] += n_probes * PROBE_SECONDS_W16 * scale * probe_scale
    pairs = {(s.start, s.seed) for s in plan(config)}
    if config.screen:
        todo = [p for p in pairs if cache is None or not screen_path(*p, config, cache).is_file()]
        parts["screening"] = len(todo) * SCREEN_SECONDS_N480 * scale * config.screen_n / 480
    towers = set()
    for start, seed in pairs:
        if start != "random":
            for ref in pair_refs(start, seed, config.width, config.tower_steps):
                towers.add(ModelRef.parse(ref).zoo_recipe.run())
    parts["zoo towers"] = sum(r.training_seconds() for r in towers if not (run_folder(r) / "run.json").is_file())
    parts["total"] = sum(parts.values())
    return {k: round(v, 1) for k, v in parts.items()}


def run_experiment(
    config: ExperimentConfig,
    cache: Path,
    *,
    log: Callable[[str], None] | None = None,
    progress_for: Callable[[str], ProgressFn | None] | None = None,
) -> dict[str, Any]:
    """Every run of ``plan(config)`` and every screening, each from the cache when done before; the results
    document (``summarise``). ``log`` gets one line per event; ``progress_for(label)`` a per-step callback for
    each run that trains."""
    from phasecore.sources import load_encoder

    say = log or (lambda line: None)
    started, wall = datetime.now(UTC), time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    runs = plan(config)
    estimate = estimate_seconds(config, cache)
    say(
        f"phase-aware experiment ({config.preset}): {len(runs)} runs, {len(config.seeds)} seed(s), width "
        f"{config.width}, {config.align.examples:,} examples per fold × {config.align.folds} folds; cache {cache}; "
        f"estimated {estimate['total'] / 60:.0f} min for what is not cached"
    )
    screens: list[dict[str, Any]] = []
    if config.screen:
        order = (*STARTS, CEILING)
        pairs = sorted({(s.start, s.seed) for s in runs}, key=lambda p: (order.index(p[0]), p[1]))
        for k, (start, seed) in enumerate(pairs, 1):
            tick = time.perf_counter()
            screens.append(screen_starting_pair(start, seed, config, cache))
            s = screens[-1]
            say(
                f"[screen {k}/{len(pairs)}] {start} seed {seed}: S_NTK "
                f"{s['s_ntk_vision']:.3f}/{s['s_ntk_language']:.3f} "
                f"({s['phase_vision']}/{s['phase_language']}), S_cross centered {s['s_ntk_cross_centered']:.3f}, "
                f"proxy {s['proxy_outcome']} ({time.perf_counter() - tick:.0f} s)"
            )
    records: list[dict[str, Any]] = []
    done_seconds, done = 0.0, 0
    for k, spec in enumerate(runs, 1):
        key = run_key(spec, config)
        path = cache / "runs" / f"{key}.json"
        label = f"[{k}/{len(runs)}] {spec.start} seed {spec.seed} × {spec.method}"
        if path.is_file():
            record = json.loads(path.read_text())
            records.append(record)
            say(f"{label}: cached ({_line(record)})")
            continue
        tick = time.perf_counter()
        vision_ref, language_ref = spec.refs(config)
        vision, language = load_encoder(vision_ref), load_encoder(language_ref)
        settings, method = spec.settings(config)
        result = align_pair(
            vision, language, settings, method, progress=progress_for(label) if progress_for else None
        )
        record = {"key": key, "start": spec.start, "seed": spec.seed, "method": spec.method, "run": result,
                  "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, allow_nan=False))
        tmp.replace(path)
        records.append(record)
        done_seconds += time.perf_counter() - tick
        done += 1
        left = sum(1 for s in runs[k:] if not (cache / "runs" / f"{run_key(s, config)}.json").is_file())
        eta = left * done_seconds / done / 60
        say(f"{label}: {_line(record)} ({time.perf_counter() - tick:.0f} s; about {eta:.0f} min left)")
    document = {
        "experiment": config.to_dict(),
        "version": EXPERIMENT_VERSION,
        "machine": machine(),
        "started_at": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "estimate_seconds": estimate,
        "paper": PAPER_TABLE2,
        "screens": screens,
        "runs": records,
    }
    document["summary"] = summarise(document)
    return document


def _line(record: Mapping[str, Any]) -> str:
    run = record["run"]
    reached = ", ".join(f"≥ {t} at {_examples(e)}" for t, e in run["reached"].items())
    return f"final alignment {run['final']['alignment_score']:+.3f} ({run['final']['outcome']}); {reached}"


def _examples(value: int | None) -> str:
    return "not reached" if value is None else f"{value:,}"


def _interval(values: Sequence[float]) -> dict[str, Any] | None:
    """Mean and 95 % t-interval over seeds (bounds None for one seed); None when no value is finite."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return None
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": int(x.size), "values": x.tolist()}
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(x.size), "values": x.tolist()}


def _examples_summary(values: Sequence[int | None]) -> dict[str, Any]:
    """Median over seeds with "not reached" as +∞ (None when it is), the range and how many reached."""
    finite = sorted(v for v in values if v is not None)
    ordered = sorted(math.inf if v is None else float(v) for v in values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {
        "median": None if math.isinf(median) else median,
        "min": finite[0] if finite else None,
        "max": None if len(finite) < n else (finite[-1] if finite else None),
        "reached": len(finite),
        "n": n,
        "values": list(values),
    }


def _kind(run: Mapping[str, Any], kind: str) -> float:
    """The final mean s_g over the groups holding out one kind of value (NaN when the groups name no kind)."""
    return float((run["final"]["group_means"] or {}).get(kind, math.nan))


def summarise(document: Mapping[str, Any]) -> dict[str, Any]:
    """Per (start, method): examples to each threshold, final alignment with its interval over seeds, the mean
    curve, the cost of the extra measurements; and the paper's ordering checked per start."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in document["runs"]:
        groups.setdefault((record["start"], record["method"]), []).append(record)
    cells: list[dict[str, Any]] = []
    rank = {name: i for i, name in enumerate((*STARTS, CEILING, *PAPER_ORDER[::-1]))}
    for (start, method), records in sorted(groups.items(), key=lambda item: (rank[item[0][0]], rank[item[0][1]])):
        runs = [r["run"] for r in sorted(records, key=lambda r: r["seed"])]
        thresholds = list(runs[0]["reached"])
        curves = [[(p["examples"], p["alignment_score"]) for p in run["checkpoints"]] for run in runs]
        examples = [e for e, _ in curves[0]]
        mean_curve = [
            float(np.mean([c[i][1] for c in curves if i < len(c)])) for i in range(len(examples))
        ]
        outcomes = [run["final"]["outcome"] for run in runs]
        cells.append(
            {
                "start": start,
                "method": method,
                "seeds": [r["seed"] for r in sorted(records, key=lambda r: r["seed"])],
                "reached": {t: _examples_summary([run["reached"][t] for run in runs]) for t in thresholds},
                "final": _interval([run["final"]["alignment_score"] for run in runs]),
                "peak": _interval([max(p["alignment_score"] for p in run["checkpoints"]) for run in runs]),
                "final_colors": _interval([_kind(run, "colors") for run in runs]),
                "final_shapes": _interval([_kind(run, "shapes") for run in runs]),
                "outcomes": {o: outcomes.count(o) for o in ("aligned", "failed", "inconclusive")},
                "diverged_folds": sum(len(run.get("diverged") or []) for run in runs),
                "curve": {"examples": examples, "mean": mean_curve, "seeds": [[s for _, s in c] for c in curves]},
                "costs": {
                    key: float(np.mean([run["costs"][key] or 0.0 for run in runs]))
                    for key in ("train_seconds", "probe_seconds", "n_probes", "probe_share", "total_seconds")
                },
                "rates_final": {
                    side: float(np.mean([run["final"]["rate"][side] for run in runs]))
                    for side in ("vision", "language")
                },
                "compatible_search": [
                    {side: {k: v for k, v in state.get("search", {}).get(side, {}).items() if k != "trace"}
                     for side in ("vision", "language")}
                    for run in runs for state in run["methods_state"]
                ] if method == "compatible" else None,
            }
        )  # fmt: skip
    ordering = {start: _ordering([c for c in cells if c["start"] == start]) for start in STARTS}
    return {"cells": cells, "ordering": ordering, "paper_order": list(PAPER_ORDER)}


def _tiers(methods: Sequence[str], key: Callable[[str], float]) -> list[list[str]]:
    """The methods ranked best first by ``key`` (lower is better), equal keys sharing a tier."""
    tiers: list[list[str]] = []
    for method in sorted(methods, key=key):
        if tiers and key(tiers[-1][0]) == key(method):
            tiers[-1].append(method)
        else:
            tiers.append([method])
    return tiers


def _ordering(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The methods ranked, best first, by median examples to the first threshold (not reached: last) and by mean
    final alignment (to 3 decimals), equal ones in one tier; whether each ranking is the paper's, strictly."""
    if not cells:
        return None
    by_method = {c["method"]: c for c in cells}
    threshold = next(iter(cells[0]["reached"]))

    def cost(method: str) -> float:
        median = by_method[method]["reached"][threshold]["median"]
        return math.inf if median is None else float(median)

    methods = [m for m in PAPER_ORDER if m in by_method]
    final = {m: by_method[m]["final"]["mean"] for m in methods}
    by_examples = _tiers(methods, cost)
    by_final = _tiers(methods, lambda m: -round(final[m], 3))
    strict_examples = all(cost(a) < cost(b) for a, b in zip(methods, methods[1:], strict=False))
    strict_final = all(final[a] > final[b] for a, b in zip(methods, methods[1:], strict=False))
    return {
        "threshold": threshold,
        "by_examples": by_examples,
        "by_final": by_final,
        "paper_holds_by_examples": strict_examples,
        "paper_holds_by_final": strict_final,
        "examples": {m: by_method[m]["reached"][threshold]["median"] for m in methods},
    }
