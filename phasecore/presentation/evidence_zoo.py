"""The zoo's part of the evidence page: every tower's phase, the colour and shape groups apart, the doses, the
comparators and intervals of the study, the outcome test's calibration, and each rule against the measured
alignment (issue 19). Read from the evidence file and the batch document of its run, like ``doc``; no torch.

Choices:

- A tower's figures (S_NTK, phase, λ_1/λ_k) are those of its profile, read from any pair that holds it.
- Colour and shape groups: ``shapes`` holds out colours in some groups and shapes in others
  (``phasecore.data.shapes.held_out_groups``); a group's kind is found from its classes in the groups of the
  stratum's dataset and seed. A pair blind to shape can be "aligned" on colour groups alone, so both means are
  shown.
- Doses: for each knob (``steps``, ``caption_noise``, the blend t toward the initialisation, t = 1 being the
  untrained tower of the same seed, width and init), one side varies while the other is the base tower (the
  joint seed-0 run at 300 steps); and the pairs whose two towers come from the same run.
- Null pairs, whose answer is "no shared meaning" by construction, two ways: the issue's ("unimodal × unimodal,
  random × anything": every pair of two zoo towers, neither jointly trained, or with an untrained tower) and
  the text side's (the text tower is not jointly trained: unimodal, random or the offline MiniLM, whatever the
  vision side). Their fraction decided "aligned" at α, with a 95% Wilson interval and a two-way bootstrap
  interval over models (the pairs share towers and the sign-flip groups share fitting classes, so pairs are not
  independent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from phasecore.data.shapes import held_out_groups, parse_shapes_options
from phasecore.errors import PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.screening.batch import as_result
from phasecore.stats import auroc, wilson_interval
from phasecore.study.quality import BOOTSTRAP_DRAWS, BOOTSTRAP_SEED, COMPARATORS, RULE_SCORES, RULES
from phasecore.zoo.recipe import ZooRecipe

#: the base tower of the dose series: the joint seed-0 run at 300 steps
BASE_QUERY = "steps=300"
_OUTCOME_COLORS = {"aligned": "tab:blue", "failed": "tab:red", "inconclusive": "tab:gray"}
#: what the scatter figure and the dose tables show for a pair, each (title, value of a record)
PANELS: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...] = (
    ("log10 AGOP ratio (AGOP rule)", lambda r: r.get("log_agop")),
    ("ΔNTK × log10 AGOP (combined rule)", lambda r: _product(r.get("delta_ntk"), r.get("log_agop"))),
    ("ΔNTK (NTK-difference rule)", lambda r: r.get("delta_ntk")),
    ("S_NTK^cross (cross-phase rule)", lambda r: r.get("s_ntk_cross")),
    ("S_cross centered", lambda r: r.get("s_ntk_cross_centered")),
    ("S_cross unbiased", lambda r: r.get("s_ntk_cross_unbiased")),
    ("CKA", lambda r: r.get("cka")),
    ("mutual kNN", lambda r: r.get("mutual_knn")),
)


def _product(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) * float(b)


def recipe_of(reference: str) -> tuple[ZooRecipe, float] | None:
    """(recipe, blend t) of a zoo reference; None for any other (t = 1 for an untrained tower)."""
    try:
        ref = ModelRef.parse(reference)
    except PhasescreenError:
        return None
    if ref.source != "zoo":
        return None
    recipe = ref.zoo_recipe
    return recipe, (1.0 if recipe.mode == "random" else float(ref.blend or 0.0))


def _num(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None or not math.isfinite(float(value)) else format(float(value), spec)


def _interval(values: Any, spec: str = ".2f") -> str:
    return "—" if not values else f"[{format(values[0], spec)}, {format(values[1], spec)}]"


# --- towers -------------------------------------------------------------------------------------------------


def tower_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model of the run: {side, ref, s_ntk, s_ntk_centered, phase, agop_ratio, censored, unstable,
    n_params, n_s, steps}."""
    rows: dict[str, dict[str, Any]] = {}
    for pair in document.get("pairs", []):
        result = as_result(pair.get("result"))
        if result is None:
            continue
        for side, summary in (("vision", result.vision), ("language", result.language)):
            ref = pair[side]
            if ref in rows:
                continue
            m = result.metrics
            stability = m.stability_vision if side == "vision" else m.stability_language
            agop = m.agop_vision if side == "vision" else m.agop_language
            rows[ref] = {
                "side": side,
                "ref": ref,
                "s_ntk": m.s_ntk_vision if side == "vision" else m.s_ntk_language,
                "s_ntk_centered": None if stability is None else stability.s_ntk_centered,
                "phase": m.phase_vision if side == "vision" else m.phase_language,
                "agop_ratio": m.agop_ratio_vision if side == "vision" else m.agop_ratio_language,
                "censored": bool(getattr(agop, "censored", False)) if agop is not None else False,
                "unstable": bool(getattr(agop, "unstable", False)) if agop is not None else False,
                "n_params": summary.identity.get("n_params"),
                "n_s": None if stability is None else stability.subset,
                "steps": None if stability is None else stability.steps,
            }
    return sorted(rows.values(), key=lambda r: (r["side"] != "vision", r["ref"]))


def towers_table(document: Mapping[str, Any]) -> list[str]:
    rows = tower_rows(document)
    lines = [
        "| side | tower | parameters | S_NTK (phase) | S_NTK centered | AGOP λ_1/λ_k (log10) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["agop_ratio"]
        flags = (" censored" if r["censored"] else "") + (" unstable" if r["unstable"] else "")
        lines.append(
            f"| {r['side']} | `{r['ref']}` | {r['n_params'] or '—'} | {_num(r['s_ntk'], '.4f')} ({r['phase']}) "
            f"| {_num(r['s_ntk_centered'], '.3f')} | {_num(ratio, '.3g')} ({_num(_log10(ratio), '.2f')}){flags} |"
        )
    counts = {phase: sum(r["phase"] == phase for r in rows) for phase in sorted({r["phase"] for r in rows})}
    logs = [v for v in (_log10(r["agop_ratio"]) for r in rows) if v is not None]
    stabilities = [r["s_ntk"] for r in rows if r["s_ntk"] is not None]
    lines += [
        "",
        f"Phases reached: {', '.join(f'{phase} {n}' for phase, n in counts.items())} of {len(rows)} towers; "
        f"S_NTK from {_num(min(stabilities, default=None), '.3f')} to {_num(max(stabilities, default=None), '.4f')}"
        f"; log10 λ_1/λ_k from {_num(min(logs, default=None), '.2f')} to {_num(max(logs, default=None), '.2f')} "
        f"({_num(max(logs, default=0) - min(logs, default=0), '.2f')} decades).",
    ]
    return lines


def _log10(value: Any) -> float | None:
    return math.log10(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else None


# --- colour and shape groups --------------------------------------------------------------------------------


def group_kind_means(record: Mapping[str, Any]) -> dict[str, float | None]:
    """Mean s_g of the colour groups and of the shape groups of one record (``group_scores`` with classes),
    the kinds found in the ``shapes`` groups of the record's stratum (dataset options, seed)."""
    stratum = record.get("stratum") or {}
    dataset = str(stratum.get("dataset") or "")
    name, _, query = dataset.partition("?")
    out: dict[str, float | None] = {"colors": None, "shapes": None}
    if name != "shapes":
        return out
    options = parse_shapes_options(query)
    seed = int(((stratum.get("settings") or {}).get("seed")) or 0)
    kinds = {
        tuple(sorted(g["classes"])): next(iter(g["held_out"]))
        for g in held_out_groups(options["colors"], options["shapes"], seed)
    }
    found: dict[str, list[float]] = {"colors": [], "shapes": []}
    for group in record.get("group_scores") or []:
        kind = kinds.get(tuple(sorted(group.get("classes") or ())))
        if kind is not None and group.get("s_g") is not None:
            found[kind].append(float(group["s_g"]))
    return {kind: float(np.mean(values)) if values else None for kind, values in found.items()}


def kind_summary(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Mean over pairs of the colour-group and shape-group means, by outcome."""
    lines = ["| outcome | pairs | mean s_g, colour groups | mean s_g, shape groups |", "|---|---:|---:|---:|"]
    for outcome in ("aligned", "failed", "inconclusive"):
        chosen = [group_kind_means(r) for r in records if r.get("outcome") == outcome]
        colors = [m["colors"] for m in chosen if m["colors"] is not None]
        shapes = [m["shapes"] for m in chosen if m["shapes"] is not None]
        lines.append(
            f"| {outcome} | {len(chosen)} | {_num(np.mean(colors) if colors else None, '+.3f')} "
            f"| {_num(np.mean(shapes) if shapes else None, '+.3f')} |"
        )
    return lines


# --- doses --------------------------------------------------------------------------------------------------


def _knob(recipe: ZooRecipe, t: float, knob: str) -> float:
    return float(t if knob == "blend" else getattr(recipe, knob))


def _is_base_family(recipe: ZooRecipe, t: float, base: ZooRecipe, knob: str) -> bool:
    """Whether a tower equals ``base`` except for ``knob`` (for the blend, t = 1: the base's initialisation)."""
    if knob == "blend":
        if recipe.mode == "random":
            init = replace(base, mode="random", steps=600, lr=2e-3, caption_noise=0.0, partner=None)
            return replace(recipe, tower=base.tower) == replace(init, tower=base.tower)
        return replace(recipe, tower=base.tower) == base
    if t != 0.0:
        return False
    return replace(recipe, **{knob: getattr(base, knob)}, tower=base.tower) == base


def dose_series(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each knob and side: the pairs whose other side is the base tower and whose varied side is the base
    but for the knob, sorted by the knob's value; each {knob, side, x, records}."""
    out = []
    for knob in ("steps", "caption_noise", "blend"):
        for side, other in (("vision", "language"), ("language", "vision")):
            base = ModelRef.parse(f"zoo:shapes?tower={'vision' if side == 'vision' else 'text'}&{BASE_QUERY}")
            other_base = ModelRef.parse(
                f"zoo:shapes?tower={'text' if side == 'vision' else 'vision'}&{BASE_QUERY}"
            ).canonical()
            points = []
            for record in records:
                found = recipe_of(str(record[side]))
                if record[other] != other_base or found is None:
                    continue
                recipe, t = found
                if _is_base_family(recipe, t, base.zoo_recipe, knob):
                    points.append((_knob(recipe, t, knob), record))
            if len({x for x, _ in points}) >= 2:
                points.sort(key=lambda p: p[0])
                out.append({"knob": knob, "side": side, "x": [x for x, _ in points], "records": [r for _, r in points]})
    return out


def dose_tables(records: Sequence[Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    names = {"steps": "training steps", "caption_noise": "caption_noise", "blend": "blend t toward the init"}
    for series in dose_series(records):
        lines += [
            f"**{names[series['knob']]}**, {series['side']} tower varied, the other the base (`{BASE_QUERY}`):",
            "",
            "| "
            + names[series["knob"]]
            + " | alignment_score | outcome | colour / shape s_g | "
            + " | ".join(title for title, _ in PANELS)
            + " |",
            "|---:|---:|---|---|" + "---:|" * len(PANELS),
        ]
        for x, record in zip(series["x"], series["records"], strict=True):
            kinds = group_kind_means(record)
            lines.append(
                f"| {x:g} | {_num(record.get('alignment_score'), '+.3f')} | {record.get('outcome')} "
                f"| {_num(kinds['colors'], '+.2f')} / {_num(kinds['shapes'], '+.2f')} | "
                + " | ".join(_num(get(record)) for _, get in PANELS)
                + " |"
            )
        lines.append("")
    return lines


def same_run_pairs(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The pairs whose two zoo towers come from one joint run (or are the two initialisations of one seed)."""
    lines = [
        "| run (vision tower's recipe) | blend t | alignment_score | outcome | colour / shape s_g |",
        "|---|---:|---:|---|---|",
    ]
    for record in records:
        v, t = recipe_of(str(record["vision"])), recipe_of(str(record["language"]))
        if v is None or t is None or v[1] != t[1]:
            continue
        same = (v[0].mode == t[0].mode == "joint" and v[0].run_key() == t[0].run_key()) or (
            v[0].mode == t[0].mode == "random"
            and (v[0].seed, v[0].width, v[0].init, v[0].out) == (t[0].seed, t[0].width, t[0].init, t[0].out)
        )
        if not same:
            continue
        kinds = group_kind_means(record)
        lines.append(
            f"| `{record['vision']}` | {v[1]:g} | {_num(record.get('alignment_score'), '+.3f')} "
            f"| {record.get('outcome')} | {_num(kinds['colors'], '+.2f')} / {_num(kinds['shapes'], '+.2f')} |"
        )
    return lines


# --- null calibration ---------------------------------------------------------------------------------------


def _trained_jointly(reference: str) -> bool:
    found = recipe_of(reference)
    return found is not None and found[0].mode == "joint" and found[1] < 1.0


def is_null_pair(record: Mapping[str, Any], definition: str) -> bool:
    """``issue``: two zoo towers, neither trained jointly, or one of them untrained; ``text``: the text tower is
    not trained jointly (a zoo tower trained alone or untrained, or an offline model that never saw shapes)."""
    vision, language = str(record["vision"]), str(record["language"])
    if definition == "text":
        return not _trained_jointly(language)
    v, t = recipe_of(vision), recipe_of(language)
    if v is None or t is None:
        return False
    untrained = v[0].mode == "random" or t[0].mode == "random"
    return untrained or (not _trained_jointly(vision) and not _trained_jointly(language))


def calibration(records: Sequence[Mapping[str, Any]], definition: str, alpha: float) -> dict[str, Any]:
    """Fraction of the null pairs decided "aligned" (and "failed"), with a Wilson and a two-way bootstrap
    interval over models."""
    null = [r for r in records if is_null_pair(r, definition) and r.get("outcome") is not None]
    aligned = np.array([r.get("outcome") == "aligned" for r in null], dtype=float)
    n = len(null)
    out: dict[str, Any] = {
        "definition": definition,
        "n": n,
        "aligned": int(aligned.sum()),
        "failed": sum(r.get("outcome") == "failed" for r in null),
        "alpha": alpha,
        "rate": float(aligned.mean()) if n else None,
        "wilson95": wilson_interval(float(aligned.sum()) / n, n) if n else None,
        "bootstrap95": None,
    }
    if n:
        vision = np.unique([str(r["vision"]) for r in null], return_inverse=True)[1]
        language = np.unique([str(r["language"]) for r in null], return_inverse=True)[1]
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        rates = []
        for _ in range(BOOTSTRAP_DRAWS):
            wv = np.bincount(rng.integers(0, vision.max() + 1, vision.max() + 1), minlength=vision.max() + 1)
            wl = np.bincount(rng.integers(0, language.max() + 1, language.max() + 1), minlength=language.max() + 1)
            w = wv[vision] * wl[language]
            if w.sum():
                rates.append(float((w * aligned).sum() / w.sum()))
        out["bootstrap95"] = [float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))]
    return out


def calibration_lines(records: Sequence[Mapping[str, Any]], alpha: float) -> list[str]:
    words = {
        "issue": "unimodal × unimodal and untrained × anything (zoo towers)",
        "text": "the text tower not trained jointly (unimodal, untrained, or MiniLM), any vision tower",
    }
    lines = [
        "| null pairs | n | decided aligned | rate (Wilson 95%) | bootstrap 95% over models | decided failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for definition in ("issue", "text"):
        c = calibration(records, definition, alpha)
        lines.append(
            f"| {words[definition]} | {c['n']} | {c['aligned']} | {_num(c['rate'], '.3f')} "
            f"{_interval(c['wilson95'], '.3f')} | {_interval(c['bootstrap95'], '.3f')} | {c['failed']} |"
        )
    return lines


# --- the outcome threshold τ: how the decided pairs and the predictors' AUROC move with it --------------------

def _failure_score(record: Mapping[str, Any], name: str) -> float | None:
    """Larger predicts failure: a rule's continuous score as the study forms it (``RULE_SCORES``), a comparator
    negated (a similarity: low predicts failure); None where the record lacks a finite value."""
    try:
        value = RULE_SCORES[name](record) if name in RULE_SCORES else -float(record[name])
    except (KeyError, TypeError):
        return None
    return float(value) if math.isfinite(float(value)) else None


def tau_sensitivity(records: Sequence[Mapping[str, Any]], taus: Sequence[float], alpha: float) -> list[dict[str, Any]]:
    """Per τ: every record re-decided from its stored group scores (``decide_outcome`` at τ, α), the counts, and each
    rule's and comparator's in-sample AUROC for failure over the decided pairs (no cross-validation: the point is
    how the ranking moves with τ, not the held-out figure, which is the study's)."""
    from phasecore.groundtruth.outcome_test import decide_outcome

    rows = []
    for tau in taus:
        decided: list[tuple[Mapping[str, Any], bool]] = []
        counts = {"aligned": 0, "failed": 0, "inconclusive": 0}
        for record in records:
            scores = [g["s_g"] for g in record.get("group_scores") or [] if g.get("s_g") is not None]
            if not scores:
                continue
            outcome = decide_outcome(np.array(scores), tau=tau, alpha=alpha)["outcome"]
            counts[outcome] += 1
            if outcome != "inconclusive":
                decided.append((record, outcome == "failed"))
        aurocs: dict[str, float | None] = {}
        for name in (*RULES, *COMPARATORS):
            pairs = [(_failure_score(r, name), failed) for r, failed in decided]
            usable = [(s, f) for s, f in pairs if s is not None]
            aurocs[name] = auroc(np.array([f for _, f in usable], dtype=bool), np.array([s for s, _ in usable]))
        rows.append({"tau": tau, **counts, "auroc": aurocs})
    return rows


def tau_lines(records: Sequence[Mapping[str, Any]], alpha: float, current: float | None) -> list[str]:
    taus = sorted({0.1, 0.15, 0.2, 0.25, 0.3} | ({current} if current is not None else set()))
    names = (*RULES, *COMPARATORS)
    lines = [
        "| τ | aligned | failed | inconclusive | " + " | ".join(names) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(names),
    ]
    for row in tau_sensitivity(records, taus, alpha):
        mark = " (this run)" if current is not None and abs(row["tau"] - current) < 1e-12 else ""
        lines.append(
            f"| {row['tau']:g}{mark} | {row['aligned']} | {row['failed']} | {row['inconclusive']} | "
            + " | ".join(_num(row["auroc"][n], ".2f") for n in names)
            + " |"
        )
    lines += [
        "",
        "Each pair re-decided from its stored group scores at τ (the sign-flip test of METRICS §7, α as in the "
        "run); AUROC for failure over that τ's decided pairs, in sample (no cross-validation), every predictor "
        "oriented so that higher means failure by its own rule (the cross-phase rule and the comparators: lower).",
    ]
    return lines


# --- the study's comparators and intervals ------------------------------------------------------------------


def study_table(entry: Mapping[str, Any]) -> list[str]:
    """Every predictor of one stratum: AUROC, accuracy, Brier with their bootstrap intervals, Spearman ρ and the
    cross-validated threshold's held-out accuracy (rules)."""
    if entry.get("status") != "ok":
        return [f"Study: **{entry.get('status')}** ({entry.get('reason')})."]
    lines = [
        "| predictor | AUROC [95%] | accuracy [95%] (n) | accuracy at the CV threshold (n) | Brier [95%] "
        "| Spearman ρ vs alignment_score |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, figures: Mapping[str, Any], cv: Mapping[str, Any] | None, rho: Any) -> str:
        interval = figures.get("interval95") or {}
        cv_text = "—" if not cv else f"{_num(cv.get('held_out_accuracy'), '.3f')} ({cv.get('n')})"
        return (
            f"| {name} | {_num(figures.get('auroc'))} {_interval(interval.get('auroc'))} "
            f"| {_num(figures.get('accuracy'))} {_interval(interval.get('accuracy'))} ({figures.get('n')}) "
            f"| {cv_text} | {_num(figures.get('brier'))} {_interval(interval.get('brier'))} | {rho} |"
        )

    for rule in RULES:
        figures = entry["rules"][rule]
        rho = figures.get("spearman_rho") or {}
        lines.append(
            row(
                f"{rule} (paper's threshold)",
                figures,
                figures.get("cv_threshold"),
                f"{_num(rho.get('rho'), '+.2f')} (p {_num(rho.get('p'), '.2g')})",
            )
        )
    lines.append(row("logistic model (6 features)", entry["logistic"], None, "—"))
    for name in COMPARATORS:
        lines.append(row(f"{name} alone (logistic, direction fitted)", entry["comparators"][name], None, "—"))
    lines.append(row("base rate (no information)", entry["base_rate"], None, "—"))
    boot = entry.get("bootstrap") or {}
    lines += [
        "",
        f"Leave-one-model-out; intervals: {boot.get('draws')} draws, seed {boot.get('seed')}, {boot.get('scheme')}. "
        "A rule's Brier score is that of its 0/1 verdict (1 − accuracy).",
    ]
    return lines


# --- figure -------------------------------------------------------------------------------------------------


def rules_against_alignment(records: Sequence[Mapping[str, Any]]) -> Figure:
    """Each rule's input (and each comparator) against alignment_score, one point per pair, coloured by outcome."""
    fig = Figure(figsize=(13.0, 6.5), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    for ax, (title, get) in zip(axes, PANELS, strict=True):
        for outcome, color in _OUTCOME_COLORS.items():
            points = [
                (float(get(r)), float(r["alignment_score"]))
                for r in records
                if r.get("outcome") == outcome
                and get(r) is not None
                and r.get("alignment_score") is not None
                and math.isfinite(float(get(r)))
            ]
            if points:
                x, y = zip(*points, strict=True)
                ax.scatter(x, y, s=12, color=color, label=f"{outcome} ({len(points)})", alpha=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("alignment_score", fontsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("Each rule's value and each comparator against the measured alignment_score, by outcome")
    return fig


def _run_tau(records: Sequence[Mapping[str, Any]]) -> float | None:
    taus = {((r.get("stratum") or {}).get("settings") or {}).get("failure_threshold") for r in records}
    tau = next(iter(taus)) if len(taus) == 1 else None
    return None if tau is None else float(tau)


def zoo_section(evidence: Mapping[str, Any], document: Mapping[str, Any], *, alpha: float) -> list[str]:
    """The zoo's markdown, for the first stratum of the evidence file."""
    strata = (evidence.get("study") or {}).get("strata") or []
    if not strata:
        return []
    entry = strata[0]
    key = (entry.get("stratum") or {}).get("key")
    records = [r for r in evidence.get("records") or [] if (r.get("stratum") or {}).get("key") == key]
    return [
        "### Every predictor, with intervals (METRICS §8, 2026-12-07)",
        "",
        *study_table(entry),
        "",
        "### Colour groups and shape groups",
        "",
        *kind_summary(records),
        "",
        "### Phases: every tower's S_NTK, phase and AGOP ratio",
        "",
        *towers_table(document),
        "",
        "### The outcome test's calibration on null pairs",
        "",
        *calibration_lines(records, alpha),
        "",
        "### The outcome threshold τ: decided pairs and AUROC at every τ",
        "",
        *tau_lines(records, alpha, _run_tau(records)),
        "",
        "### Dose-response along steps, caption_noise and blend",
        "",
        *dose_tables(records),
        "**Pairs of one run** (both towers from the same joint run, or both untrained of one seed):",
        "",
        *same_run_pairs(records),
        "",
    ]
