"""The results section of docs/phase-aware.md and its figure, written from the experiment's results document.

``phasescreen phase-aware`` renders :func:`results_markdown` between the markers ``<!-- phase-aware:begin -->``
and ``<!-- phase-aware:end -->`` of the page (everything outside them is prose written by hand;
``presentation.evidence_page.replace_section``) and :func:`write_figure` into the figure folder. Nothing here is
typed by hand: rerunning the command on the same cache gives the same text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phasecore.presentation.evidence_page import num, replace_section
from phasecore.study.quality import RULES
from phasecore.training.experiment import CEILING, PAPER_TABLE2
from phasecore.training.methods import PAPER_ORDER

BEGIN, END = "<!-- phase-aware:begin -->", "<!-- phase-aware:end -->"
PLACEHOLDER = "<!-- results: filled by the experiment run -->"
FIGURE = "alignment_curves"
_LABEL = {
    "fixed": "fixed learning rate",
    "adaptive": "adaptive rate η0·S_NTK(t)",
    "regulariser": "phase regulariser",
    "compatible": "compatible init (S_NTK ≈ 0.6)",
}
_COLOUR = {"fixed": "#444444", "adaptive": "#1f77b4", "regulariser": "#2ca02c", "compatible": "#d62728"}


def _count(value: float | None) -> str:
    """An example count compactly: 1,408 / 45.1k / 6.7M."""
    if value is None:
        return "not reached"
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:,.0f}"


def _examples_cell(summary: Mapping[str, Any]) -> str:
    median = summary["median"]
    if summary["reached"] == 0:
        return f"not reached (0/{summary['n']})"
    span = f"{_count(summary['min'])}–{_count(summary['max'])}" if summary["n"] > 1 else ""
    return f"{_count(median)}" + (f" [{span}]" if span else "") + f" ({summary['reached']}/{summary['n']})"


def _interval_cell(interval: Mapping[str, Any] | None, spec: str = "+.3f") -> str:
    if interval is None:
        return "—"
    if interval["low"] is None:
        return num(interval["mean"], spec)
    return f"{num(interval['mean'], spec)} [{num(interval['low'], spec)}, {num(interval['high'], spec)}]"


def _factor(base: float | None, value: float | None) -> str:
    if base is None or value is None or value <= 0:
        return "—"
    return f"{base / value:.2g}×"


def _cells(document: Mapping[str, Any], start: str) -> dict[str, Mapping[str, Any]]:
    return {c["method"]: c for c in document["summary"]["cells"] if c["start"] == start}


def table2(document: Mapping[str, Any], start: str) -> list[str]:
    """The paper's Table 2 beside this experiment's rows for one kind of starting pair."""
    cells = _cells(document, start)
    ceiling = _cells(document, CEILING).get("fixed")
    if not cells:
        return []
    thresholds = list(next(iter(cells.values()))["reached"])
    first = thresholds[0]
    base = cells.get("fixed", {}).get("reached", {}).get(first, {}).get("median")
    head = (
        "| method | paper: examples to its alignment (alignment) | paper: × fewer than fixed | "
        + " | ".join(f"examples to ≥ {t}: median [range] (seeds reaching)" for t in thresholds)
        + f" | × fewer than fixed (≥ {first}) | final alignment_score, mean [95 % CI] | colour / shape groups "
        "| final outcome (aligned / failed / inconclusive) |"
    )
    lines = [head, "|---|---:|---:|" + "---:|" * len(thresholds) + "---:|---:|---:|---|"]
    for method in PAPER_ORDER[::-1]:
        if method not in cells:
            continue
        c, paper = cells[method], PAPER_TABLE2[method]
        median = c["reached"][first]["median"]
        outcomes = c["outcomes"]
        lines.append(
            f"| {_LABEL[method]} | {_count(paper['examples'])} ({paper['alignment']:g}) "
            f"| {_factor(PAPER_TABLE2['fixed']['examples'], paper['examples'])} | "
            + " | ".join(_examples_cell(c["reached"][t]) for t in thresholds)
            + f" | {_factor(base, median)} | {_interval_cell(c['final'])} "
            f"| {_interval_cell(c['final_colors'], '+.2f')} / {_interval_cell(c['final_shapes'], '+.2f')} "
            f"| {outcomes['aligned']} / {outcomes['failed']} / {outcomes['inconclusive']} |"
        )
    if ceiling is not None:
        outcomes = ceiling["outcomes"]
        lines.append(
            "| ceiling: the joint pair, fixed rate | — | — | "
            + " | ".join(_examples_cell(ceiling["reached"][t]) for t in thresholds)
            + f" | — | {_interval_cell(ceiling['final'])} "
            f"| {_interval_cell(ceiling['final_colors'], '+.2f')} / {_interval_cell(ceiling['final_shapes'], '+.2f')} "
            f"| {outcomes['aligned']} / {outcomes['failed']} / {outcomes['inconclusive']} |"
        )
    return lines


def ordering_lines(document: Mapping[str, Any]) -> list[str]:
    """One plain sentence per kind of start: does the paper's ordering hold here?"""
    lines = []
    paper = " > ".join(PAPER_ORDER)
    for start, found in document["summary"]["ordering"].items():
        if not found:
            continue
        threshold = found["threshold"]
        examples = ", ".join(f"{m} {_count(found['examples'][m])}" for tier in found["by_examples"] for m in tier)
        verdict = "**holds**" if found["paper_holds_by_examples"] else "**does not hold**"
        final = "holds" if found["paper_holds_by_final"] else "does not hold"
        lines.append(
            f"- **{start} starts**: by median examples to reach alignment_score ≥ {threshold} the order is "
            f"{_ranked(found['by_examples'])} ({examples}); the paper's ({paper}) {verdict}, strictly. By mean "
            f"final alignment the order is {_ranked(found['by_final'])}: the paper's {final}."
        )
    return lines


def _ranked(tiers: list[list[str]]) -> str:
    return " > ".join(" = ".join(tier) for tier in tiers)


def screening_table(document: Mapping[str, Any]) -> list[str]:
    """Each starting pair's screening beside how each method's training went."""
    screens = document.get("screens") or []
    if not screens:
        return ["(screening not run)"]
    runs = {(r["start"], r["seed"], r["method"]): r["run"] for r in document["runs"]}
    methods = [m for m in PAPER_ORDER[::-1] if any(k[2] == m for k in runs)]
    first = next(iter(document["runs"][0]["run"]["reached"])) if document["runs"] else "0.3"
    lines = [
        "| starting pair | seed | S_NTK vision / language (phase) | ΔNTK | S_cross uncentered / centered (p) | CKA "
        "| rules predicting failure | §7 proxy alignment_score (outcome) | "
        + " | ".join(f"{m}: final (examples to ≥ {first})" for m in methods)
        + " |",
        "|---|---:|---|---:|---|---:|---|---|" + "---|" * len(methods),
    ]
    for s in screens:
        flagged = [rule for rule in RULES if (s.get("predictions") or {}).get(rule)]
        cells = []
        for method in methods:
            run = runs.get((s["start"], s["seed"], method))
            cells.append(
                "—" if run is None else f"{run['final']['alignment_score']:+.2f} ({_count(run['reached'][first])})"
            )
        lines.append(
            f"| {s['start']} | {s['seed']} | {num(s['s_ntk_vision'])} / {num(s['s_ntk_language'])} "
            f"({s['phase_vision']} / {s['phase_language']}) | {num(s['delta_ntk'])} "
            f"| {num(s['s_ntk_cross'])} / {num(s['s_ntk_cross_centered'])} ({num(s['s_ntk_cross_centered_p'])}) "
            f"| {num(s['cka'])} | {', '.join(flagged) or 'none'} "
            f"| {num(s['proxy_alignment_score'], '+.3f')} ({s['proxy_outcome']}) | " + " | ".join(cells) + " |"
        )
    return lines


def screening_lines(document: Mapping[str, Any]) -> list[str]:
    """Did the screen tell the rescued pairs from the others? Per rule: rescued among the pairs it flags and among
    the pairs it does not (rescued: reached the first threshold within the budget with that method)."""
    screens = [s for s in document.get("screens") or [] if s["start"] != CEILING]
    if not screens or not document["runs"]:
        return []
    runs = {(r["start"], r["seed"], r["method"]): r["run"] for r in document["runs"]}
    first = next(iter(document["runs"][0]["run"]["reached"]))
    methods = [m for m in PAPER_ORDER[::-1] if any(k[2] == m for k in runs)]
    lines = []
    for method in methods:

        def rescued(s: Mapping[str, Any], method: str = method) -> bool | None:
            run = runs.get((s["start"], s["seed"], method))
            return None if run is None else run["reached"][first] is not None

        parts = []
        for rule in RULES:
            flagged = [rescued(s) for s in screens if (s.get("predictions") or {}).get(rule) is True]
            clear = [rescued(s) for s in screens if (s.get("predictions") or {}).get(rule) is False]
            parts.append(
                f"{rule}: {sum(bool(x) for x in flagged)}/{len(flagged)} flagged pairs rescued, "
                f"{sum(bool(x) for x in clear)}/{len(clear)} unflagged"
            )
        by_start = []
        for start in sorted({s["start"] for s in screens}):
            outcome = [rescued(s) for s in screens if s["start"] == start]
            by_start.append(f"{start} {sum(bool(x) for x in outcome)}/{len(outcome)}")
        lines.append(
            f"- **{_LABEL[method]}** rescued (alignment_score ≥ {first} within the budget): {', '.join(by_start)}; "
            + "; ".join(parts)
            + "."
        )
    return lines


def cost_table(document: Mapping[str, Any]) -> list[str]:
    """The extra measurements of each method: S_NTK probes per run, their seconds beside the training's."""
    lines = [
        "| start | method | S_NTK probes per run | probe seconds per run | training seconds per run "
        "| probes / training | final tower rates (vision / language, × η0) | folds whose loss diverged |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for c in document["summary"]["cells"]:
        costs = c["costs"]
        lines.append(
            f"| {c['start']} | {c['method']} | {costs['n_probes']:.0f} | {costs['probe_seconds']:.1f} "
            f"| {costs['train_seconds']:.1f} | {100 * costs['probe_share']:.0f}% "
            f"| {c['rates_final']['vision']:.3g} / {c['rates_final']['language']:.3g} | {c.get('diverged_folds', 0)} |"
        )
    return lines


def search_lines(document: Mapping[str, Any]) -> list[str]:
    """Where compatible init's search landed: per start, each tower's α and S_NTK (over folds and seeds)."""
    lines = []
    for c in document["summary"]["cells"]:
        found = c.get("compatible_search")
        if not found:
            continue
        for side in ("vision", "language"):
            alphas = [f[side]["alpha"] for f in found if f.get(side)]
            values = [f[side]["s_ntk"] for f in found if f.get(side) and f[side]["s_ntk"] is not None]
            reached = sum(bool(f[side].get("reached")) for f in found if f.get(side))
            if not alphas:
                continue
            lines.append(
                f"- {c['start']} starts, {side} tower: α from {min(alphas):.3g} to {max(alphas):.3g} (rate × "
                f"{1 / max(alphas):.3g} to × {1 / min(alphas):.3g}); S_NTK reached "
                + (f"{min(values):.3f}–{max(values):.3f}" if values else "— (every probe diverged)")
                + f"; within the tolerance of the target in {reached} of {len(alphas)} folds × seeds."
            )
    return lines


def results_markdown(document: Mapping[str, Any], *, figure: str | None = None) -> str:
    """The results section (between the markers), from the results document; ``figure``: the figure's path
    relative to the page, without suffix."""
    config, machine = document["experiment"], document["machine"]
    align, method = config["align"], config["method"]
    probe = align["probe"]
    compute = sum(r["run"]["costs"]["total_seconds"] for r in document["runs"]) + sum(
        s.get("seconds", 0.0) for s in document.get("screens") or []
    )
    out = [
        BEGIN,
        "<!-- written by `phasescreen phase-aware` from its results file; edits here are overwritten -->",
        "",
        f"- **Command:** `{document.get('command')}` at commit `{document.get('commit')}`, started "
        f"{document.get('started_at')}",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; load average at "
        f"the end {', '.join(str(x) for x in machine['load_average'])}; Python {machine['python']}, torch "
        f"{machine['torch']}, {align['threads']} torch thread(s)",
        f"- **Time:** {document['wall_seconds'] / 60:.1f} min wall for this invocation; {compute / 60:.1f} min of "
        "runs and screenings in all (each run's own seconds, cached ones included; zoo tower training not counted)",
        f"- **Configuration** (preset `{config['preset']}`): zoo towers of width {config['width']} (tower steps "
        f"{config['tower_steps']}), seeds {', '.join(str(s) for s in config['seeds'])}; dataset `{align['dataset']}`, "
        f"{align['n_train']:,} training pairs (seed {align['train_seed']}), {align['n_eval']} evaluation pairs "
        f"(seed {align['eval_seed']}); train `{align['train']}`, {align['examples']:,} examples per fold (batch "
        f"{align['batch']}) × {align['folds']} folds, Adam η0 = {align['lr']:g}, heads {align['head_dim']}-d, "
        f"temperature {align['temperature']:g}, checkpoints {align['per_doubling']} per doubling; S_NTK probe "
        f"n_s = {probe['subset']}, T = {probe['steps']}, M = {probe['probes']}, every {method['every']} steps; "
        f"λ = {method['lam']:g}; target {method['target']:g} ± {method['tolerance']:g}, α in "
        f"[{method['alpha_min']:g}, {method['alpha_max']:g}]; τ = {align['failure_threshold']:g}, "
        f"α_test = {align['outcome_alpha']:g}",
        "",
    ]
    for start in config["starts"]:
        seeds = len(config["seeds"])
        out += [f"#### Table 2 beside this experiment: {start} starting pairs ({seeds} seed{'s' * (seeds > 1)})", ""]
        out += [*table2(document, start), ""]
    out += ["#### The paper's ordering", "", *ordering_lines(document), ""]
    if figure:
        out += [
            "#### Alignment against examples seen",
            "",
            f"![alignment_score on held-out values against examples seen, per method]({figure}.svg)",
            "",
        ]
    out += [
        "#### What the screening said beforehand",
        "",
        *screening_table(document),
        "",
        *screening_lines(document),
        "",
        "#### Cost of the extra measurements",
        "",
        *cost_table(document),
        "",
        *search_lines(document),
        "",
        END,
    ]
    return "\n".join(out)


def write_figure(document: Mapping[str, Any], directory: Path) -> list[Path]:
    """alignment_score against examples seen (log x), one panel per kind of start: each method's mean over seeds
    (its seeds faint), the joint pair's curve as the ceiling, the thresholds dotted. SVG and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = list(document["experiment"]["starts"])
    cells = document["summary"]["cells"]
    ceiling = next((c for c in cells if c["start"] == CEILING), None)
    figure, axes = plt.subplots(1, len(starts), figsize=(5.2 * len(starts), 4.6), sharey=True, squeeze=False)
    for axis, start in zip(axes[0], starts, strict=True):
        for c in (c for c in cells if c["start"] == start):
            _plot(axis, c, colour=_COLOUR[c["method"]], label=_LABEL[c["method"]])
        if ceiling is not None:
            _plot(axis, ceiling, colour="#999999", label="ceiling: joint pair (fixed rate)", dashed=True)
        for threshold in document["runs"][0]["run"]["reached"] if document["runs"] else ():
            axis.axhline(float(threshold), color="#bbbbbb", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlabel("examples seen (per fold)")
        axis.set_title(f"{start} starting pairs")
        axis.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("alignment_score on held-out values")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".svg", ".png"):
        path = directory / f"{FIGURE}{suffix}"
        figure.savefig(path, dpi=110)
        written.append(path)
    plt.close(figure)
    return written


def _plot(axis: Any, cell: Mapping[str, Any], *, colour: str, label: str, dashed: bool = False) -> None:
    examples = cell["curve"]["examples"]
    keep = [i for i, e in enumerate(examples) if e > 0]
    x = [examples[i] for i in keep]
    for seed_curve in cell["curve"]["seeds"]:
        if len(cell["curve"]["seeds"]) > 1:
            axis.plot(x, [seed_curve[i] for i in keep if i < len(seed_curve)], color=colour, alpha=0.2, linewidth=1)
    axis.plot(
        x, [cell["curve"]["mean"][i] for i in keep], color=colour, linewidth=2, label=label,
        linestyle="--" if dashed else "-",
    )  # fmt: skip


def write_doc(page: Path, document: Mapping[str, Any], figure_dir: Path | None) -> list[Path]:
    """The figure into ``figure_dir`` (when given) and the results section into ``page`` between the markers."""
    written = write_figure(document, figure_dir) if figure_dir is not None else []
    figure = None
    if figure_dir is not None:
        relative = os.path.relpath(figure_dir.resolve(), page.resolve().parent)
        figure = f"{Path(relative).as_posix()}/{FIGURE}"
    section = results_markdown(document, figure=figure)
    text = page.read_text(encoding="utf-8") if page.exists() else "# Phase-aware training\n"
    page.write_text(replace_section(text, section, begin=BEGIN, end=END), encoding="utf-8")
    return [*written, page]


def placeholder_section() -> str:
    """The section as it stands before any run (what docs/phase-aware.md ships with)."""
    return "\n".join([BEGIN, PLACEHOLDER, END])


__all__ = ["BEGIN", "END", "PLACEHOLDER", "placeholder_section", "results_markdown", "write_doc", "write_figure"]
