"""Reports of a batch: four figures (PNG and SVG) and an HTML page that shows them with the results table.

Input is the batch document of ``phasecore.screening.batch``. The figures:

- ``phase_landscape``: each pair at (S_cross centered, measured alignment_score) (METRICS §2, §7), coloured
  by the phases of its two models (§3), marked by the measured outcome; the failure threshold is a line.
- ``cross_alignment_heatmap``: S_cross centered over the vision × language grid.
- ``model_spectra``: per model, log10 of the AGOP ratio (the AGOP rule's threshold is a line) and the
  spectral decay α of ``λ_r ∝ r^(-α)`` (§4).
- ``rule_verdicts``: for each of the paper's rules, its verdicts against the measured outcome (§5, §7).

No web or database imports: the CLI writes files with :func:`write_report`, the service serves
:func:`inline_html` (images as data URIs).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from phasecore.errors import PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.screening.batch import RULES, as_result, pair_row, totals_line

#: figure name -> caption
FIGURES: dict[str, str] = {
    "phase_landscape": (
        "Phase landscape: centered cross-modal NTK alignment against measured alignment score; the fill is "
        "the vision model's phase, the edge the language model's (red chaotic, green optimal, blue lazy, "
        "grey undetermined); crosses failed (score below the dashed threshold)."
    ),
    "cross_alignment_heatmap": "Centered cross-modal NTK alignment S_cross over the grid (blank: no result).",
    "model_spectra": (
        "Per model: log10 of the AGOP ratio λ_1/λ_k (the paper's threshold 10^6, uncalibrated for λ_1/λ_k, dashed) "
        "and the spectral decay α of λ_r ∝ r^(-α)."
    ),
    "rule_verdicts": (
        "The paper's rules against the measured outcome: counts of pairs by verdict and measured result; "
        "accuracy here is measured on this batch, the claimed accuracy is the paper's claim."
    ),
}
_PHASE_COLOURS = {"chaotic": "#d62728", "optimal": "#2ca02c", "lazy": "#1f77b4", "undetermined": "#7f7f7f"}
_RULE_TITLES = {
    "agop_rule": "AGOP rule",
    "combined_rule": "combined rule",
    "ntk_difference_rule": "ΔNTK rule",
    "cross_phase_rule": "cross-phase rule",
}


def _short(ref: str, width: int = 40) -> str:
    """A label of at most ``width`` characters; the middle goes, since references differ at both ends."""
    if len(ref) <= width:
        return ref
    head = (width - 1) // 2
    return ref[:head] + "…" + ref[len(ref) - (width - 1 - head) :]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def phase_landscape(document: Mapping[str, Any]) -> Figure:
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    threshold = (document.get("options") or {}).get("failure_threshold", 0.03)
    groups: dict[str, list[tuple[float, float, str]]] = {}
    missing = 0
    for row in map(pair_row, document["pairs"]):
        x, y = row["s_ntk_cross_centered"], row["alignment_score"]
        if not (_finite(x) and _finite(y)):
            missing += 1
            continue
        label = f"{row['phase_vision']} / {row['phase_language']}"
        outcome = row["outcome"] or {True: "failed", False: "aligned", None: "inconclusive"}[row["failed"]]
        groups.setdefault(label, []).append((x, y, outcome))
    for label, points in sorted(groups.items()):
        colour = _PHASE_COLOURS.get(label.split(" / ")[0], "#7f7f7f")
        edge = _PHASE_COLOURS.get(label.split(" / ")[1], "#7f7f7f")
        for outcome, marker in (("aligned", "o"), ("failed", "X"), ("inconclusive", "^")):
            chosen = [(x, y) for x, y, o in points if o == outcome]
            if chosen:
                xs, ys = zip(*chosen, strict=True)
                ax.scatter(
                    xs,
                    ys,
                    s=60,
                    marker=marker,
                    c=colour,
                    edgecolors=edge,
                    linewidths=1.5,
                    label=f"{label} ({outcome})",
                )
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"τ = failure threshold {threshold:g}")
    ax.set_xlabel("S_cross centered (kernel CKA of the two NTK Grams)")
    ax.set_ylabel("measured alignment score")
    hidden = f" ({missing} pair{'s' if missing != 1 else ''} without both figures not shown)" if missing else ""
    ax.set_title("Phase landscape" + hidden)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", title="vision / language phase", title_fontsize=7)
    return fig


def cross_alignment_heatmap(document: Mapping[str, Any]) -> Figure:
    vision, language = document["vision"], document["language"]
    grid = np.full((len(vision), len(language)), np.nan)
    for row in map(pair_row, document["pairs"]):
        i, j = row["vision_index"], row["language_index"]
        if i is None:
            i, j = vision.index(row["vision"]), language.index(row["language"])
        if _finite(row["s_ntk_cross_centered"]):
            grid[i, j] = row["s_ntk_cross_centered"]
    width = max(6.0, 3.5 + 0.8 * len(language))  # room for the model names and the colour bar
    fig = Figure(figsize=(width, max(3.5, 2.0 + 0.5 * len(vision))), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="S_cross centered")
    ax.set_xticks(range(len(language)), [_short(r) for r in language], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(vision)), [_short(r) for r in vision], fontsize=8)
    ax.set_xlabel("language model")
    ax.set_ylabel("vision model")
    if grid.size <= 400:
        finite = grid[np.isfinite(grid)]
        middle = float((finite.min() + finite.max()) / 2) if finite.size else 0.0
        for (i, j), value in np.ndenumerate(grid):
            if math.isfinite(value):
                ax.text(
                    j,
                    i,
                    f"{value:.3f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < middle else "black",
                )
    ax.set_title("Cross-modal NTK alignment (centered)")
    return fig


def _models(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per model with its AGOP figures and S_NTK, from the first result that has them."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for pair in document["pairs"]:
        result = as_result(pair.get("result"))
        if result is None:
            continue
        for modality in ("vision", "language"):
            key = (modality, pair[modality])
            agop = getattr(result.metrics, f"agop_{modality}")
            if key in seen or agop is None:
                continue
            log10_ratio = log10_of(getattr(result.metrics, f"agop_ratio_{modality}"))
            if log10_ratio is None:
                log10_ratio = agop.log10_ratio
            seen[key] = {
                "ref": pair[modality],
                "modality": modality,
                "log10_ratio": log10_ratio,
                "decay": agop.decay,
                "s_ntk": getattr(result.metrics, f"s_ntk_{modality}"),
            }
    order = {ref: k for k, ref in enumerate([*document["vision"], *document["language"]])}
    return sorted(seen.values(), key=lambda m: (m["modality"] != "vision", order.get(m["ref"], 0)))


def model_spectra(document: Mapping[str, Any]) -> Figure:
    models = _models(document)
    fig = Figure(figsize=(9.0, 1.5 + 0.32 * max(len(models), 1)), layout="constrained")
    ratio_ax, decay_ax = fig.subplots(1, 2, sharey=True)
    labels = [_short(m["ref"]) for m in models]
    colours = ["#1f77b4" if m["modality"] == "vision" else "#ff7f0e" for m in models]
    y = np.arange(len(models))
    for ax, key, title in (
        (ratio_ax, "log10_ratio", "log10 AGOP ratio λ_1/λ_k"),
        (decay_ax, "decay", "spectral decay α"),
    ):
        values = [m[key] if _finite(m[key]) else 0.0 for m in models]
        ax.barh(y, values, color=colours)
        for k, m in enumerate(models):
            if not _finite(m[key]):
                ax.text(0, k, "  n/a", va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    ratio_ax.axvline(6.0, color="black", linestyle="--", linewidth=1)
    ratio_ax.set_yticks(y, labels, fontsize=8)
    ratio_ax.invert_yaxis()
    fig.suptitle("AGOP spectra per model (blue: vision, orange: language)", fontsize=11)
    return fig


#: dose-response panels: (title, value of a result's typed form); the last is the measured side
_DOSE_PANELS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("log10 AGOP ratio, vision", lambda r: log10_of(r.metrics.agop_ratio_vision)),
    ("log10 AGOP ratio, language", lambda r: log10_of(r.metrics.agop_ratio_language)),
    ("ΔNTK × log10(AGOP) (combined rule)", lambda r: r.metrics.combined),
    ("ΔNTK", lambda r: r.metrics.delta_ntk),
    ("S_NTK^cross, centered", lambda r: r.metrics.s_ntk_cross_centered),
    ("alignment_score (measured, §7)", lambda r: None if r.ground_truth is None else r.ground_truth.alignment_score),
)


def _censored(result: Any, title: str) -> bool:
    """Whether the panel ``title``'s value of ``result`` is a lower bound (its AGOP ratio censored)."""
    side = "vision" if title.endswith("vision") else "language" if title.endswith("language") else None
    agop = None if side is None else getattr(result.metrics, f"agop_{side}")
    return bool(agop is not None and agop.censored)


def log10_of(value: Any) -> float | None:
    """log10 of a positive finite number (an AGOP ratio), None for anything else."""
    return math.log10(value) if isinstance(value, int | float) and _finite(value) and value > 0 else None


def blend_of(reference: str) -> tuple[str, float]:
    """(the reference without its blend and seed, t): t = 0 for pretrained weights, t for ``?blend=t``, 1 for
    ``weights=random``; a reference that does not parse is its own family at t = 0."""
    try:
        ref = ModelRef.parse(reference)
    except PhasescreenError:
        return reference, 0.0
    t = 1.0 if ref.weights == "random" else (ref.blend or 0.0)
    base = ModelRef.parse(replace(ref, blend=None, seed=None, weights="pretrained")).canonical()
    return base, float(t)


def dose_response_series(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The graded-control curves of a batch: for each model family with at least two blend levels t, the pairs
    whose other side is pretrained (t = 0), sorted by t. Each ``{"side", "family", "other", "t": [...],
    "values": {panel title: [...]}}``; a family whose other side has several pretrained models gives one
    series per such model."""
    series: dict[tuple[str, str, str], list[tuple[float, Any]]] = {}
    for pair in document["pairs"]:
        result = as_result(pair.get("result"))
        if result is None:
            continue
        (v_base, v_t), (l_base, l_t) = blend_of(pair["vision"]), blend_of(pair["language"])
        if l_t == 0.0:
            series.setdefault(("vision", v_base, pair["language"]), []).append((v_t, result))
        if v_t == 0.0:
            series.setdefault(("language", l_base, pair["vision"]), []).append((l_t, result))
    out = []
    for (side, family, other), points in series.items():
        if len({t for t, _ in points}) < 2:
            continue
        points.sort(key=lambda p: p[0])
        out.append(
            {
                "side": side,
                "family": family,
                "other": other,
                "t": [t for t, _ in points],
                "values": {title: [get(r) for _, r in points] for title, get in _DOSE_PANELS},
                # a censored AGOP ratio is a lower bound (METRICS §4): drawn as an up-pointing marker
                "lower_bound": {
                    title: [_censored(r, title) for _, r in points] for title, _ in _DOSE_PANELS
                },
            }
        )
    return out


def dose_response(document: Mapping[str, Any]) -> Figure:
    """Each rule's input and the measured alignment_score against the blend t (θ = (1 − t)·θ_pretrained +
    t·θ_random) of one side, the other side pretrained: solid lines vary the vision model, dashed the language
    model. Empty panels say so."""
    curves = dose_response_series(document)
    fig = Figure(figsize=(11.0, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, _) in zip(axes, _DOSE_PANELS, strict=True):
        drawn = 0
        for k, curve in enumerate(curves):
            values = [v if _finite(v) else np.nan for v in curve["values"][title]]
            if all(np.isnan(values)):
                continue
            style = "-" if curve["side"] == "vision" else "--"
            label = f"{_short(curve['family'], 28)} (× {_short(curve['other'], 22)})"
            ax.plot(curve["t"], values, style, marker="o", markersize=3, color=f"C{k % 10}", label=label)
            bounds = [(t, v) for t, v, b in zip(curve["t"], values, curve["lower_bound"][title], strict=True) if b]
            if bounds:  # censored ratios: the value is a floor, the true ratio is at least this
                ax.plot(*zip(*bounds, strict=True), linestyle="none", marker="^", markersize=8, color=f"C{k % 10}")
            drawn += 1
        if title.startswith("alignment_score"):
            ax.axhline(0.03, color="black", linestyle=":", linewidth=1)
        if not drawn:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("blend t (0 pretrained, 1 random init)", fontsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7)
    fig.suptitle(
        "Dose-response: graded controls toward a random init (solid: vision varied; dashed: language; "
        "▲ censored AGOP ratio, a lower bound)"
    )
    return fig


def rule_counts(document: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """Counts of (verdict, measured outcome) over pairs with both; ``undetermined``: pairs with no verdict."""
    counts = np.zeros((2, 2), dtype=int)  # rows: predicted fail / not; columns: measured failed / aligned
    undetermined = 0
    for row in map(pair_row, document["pairs"]):
        if row["failed"] is None:
            continue
        if row[rule] is None:
            undetermined += 1
            continue
        counts[0 if row[rule] else 1, 0 if row["failed"] else 1] += 1
    n = int(counts.sum())
    return {
        "counts": counts.tolist(),
        "n": n,
        "accuracy": float(np.trace(counts) / n) if n else None,
        "undetermined": undetermined,
    }


def rule_verdicts(document: Mapping[str, Any]) -> Figure:
    fig = Figure(figsize=(12.0, 3.4), layout="constrained")
    axes = fig.subplots(1, len(RULES))
    claims: dict[str, float | None] = {}
    for pair in document["pairs"]:
        result = as_result(pair.get("result"))
        for rule, prediction in (result.predictions if result else {}).items():
            claims.setdefault(rule, prediction.claimed_accuracy)
    for ax, rule in zip(axes, RULES, strict=True):
        summary = rule_counts(document, rule)
        counts = np.array(summary["counts"])
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())))
        for (i, j), value in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=11,
                color="white" if value > counts.max() / 2 else "black",
            )
        ax.set_xticks([0, 1], ["failed", "aligned"])
        ax.set_yticks([0, 1], ["predicts\nfailure", "no failure\npredicted"])
        ax.set_xlabel("measured", fontsize=8)
        accuracy = "n/a" if summary["accuracy"] is None else f"{summary['accuracy']:.0%}"
        claim = claims.get(rule)
        subtitle = f"accuracy here {accuracy} (n={summary['n']})"
        if claim:
            subtitle += f"\npaper claims {claim:.0%}"
        if summary["undetermined"]:
            subtitle += f"\n{summary['undetermined']} undetermined"
        ax.set_title(f"{_RULE_TITLES[rule]}\n{subtitle}", fontsize=9)
    return fig


_BUILDERS = {
    "phase_landscape": phase_landscape,
    "cross_alignment_heatmap": cross_alignment_heatmap,
    "model_spectra": model_spectra,
    "rule_verdicts": rule_verdicts,
    "dose_response": dose_response,
}
#: caption of the figure drawn only for batches with graded controls (``figures_of``)
DOSE_RESPONSE_CAPTION = (
    "Dose-response: each rule's inputs and the measured alignment score against the blend t of one model toward "
    "a random init of its architecture, the other model pretrained (solid: vision varied, dashed: language)."
)


def figures_of(document: Mapping[str, Any]) -> dict[str, str]:
    """The report's figures of this batch, name -> caption: ``FIGURES``, plus ``dose_response`` when the batch
    holds a model at two or more blend levels against a pretrained other side."""
    if dose_response_series(document):
        return {**FIGURES, "dose_response": DOSE_RESPONSE_CAPTION}
    return dict(FIGURES)


def render_figures(
    document: Mapping[str, Any], formats: tuple[str, ...] = ("png", "svg")
) -> dict[str, dict[str, bytes]]:
    """``{figure name: {format: bytes}}`` for every figure of ``figures_of(document)``."""
    out: dict[str, dict[str, bytes]] = {}
    for name in figures_of(document):
        fig = _BUILDERS[name](document)
        out[name] = {}
        for fmt in formats:
            buffer = io.BytesIO()
            metadata = {"Date": None} if fmt == "svg" else {}  # reproducible files
            fig.savefig(buffer, format=fmt, dpi=110, metadata=metadata)
            out[name][fmt] = buffer.getvalue()
    return out


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else str(value)
    return str(value)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
figure { margin: 2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #444; }
table { border-collapse: collapse; font-size: 0.8rem; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .failed { color: #b00; }
.claim { font-size: 0.85rem; color: #555; }
"""


def html_page(document: Mapping[str, Any], images: Mapping[str, str], links: Mapping[str, str] | None = None) -> str:
    """The report page. ``images``: figure name -> ``src`` (a file name or a data URI); ``links``: figure
    name -> href of a download (e.g. the PNG next to an SVG)."""
    e = html.escape
    title = f"phasescreen batch {document.get('name') or document.get('id') or ''}".strip()
    options = document.get("options") or {}
    settings = ", ".join(f"{k}={options[k]}" for k in ("n", "seed", "probes", "method") if k in options)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{len(document['vision'])} vision × {len(document['language'])} language models on "
        f"<code>{e(str(document.get('dataset')))}</code> ({e(settings)}); {e(totals_line(document))}.</p>",
        '<p class="claim">Thresholds and claimed accuracies are the paper\'s claims; every accuracy shown '
        "here is measured on this batch's pairs against their measured alignment (METRICS §7).</p>",
    ]
    for name, caption in figures_of(document).items():
        if name not in images:
            continue
        link = (links or {}).get(name)
        download = f' <a href="{e(link)}">PNG</a>' if link else ""
        parts.append(
            f'<figure id="{name}"><img src="{e(images[name])}" alt="{e(caption)}">'
            f"<figcaption>{e(caption)}{download}</figcaption></figure>"
        )
    columns = ("vision", "language", "state", "s_ntk_cross_centered", "cka", "alignment_score", "failed", *RULES)
    parts.append(
        "<h2>Pairs</h2><table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr></thead><tbody>"
    )
    for row in map(pair_row, document["pairs"]):
        cells = []
        for column in columns:
            value = row[column]
            css = "num" if isinstance(value, float) else ""
            if column == "failed" and value:
                css += " failed"
            cells.append(f'<td class="{css.strip()}">{e(_fmt(value))}</td>')
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts)


def write_report(document: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``<figure>.png``, ``<figure>.svg`` for every figure and ``index.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, files in render_figures(document).items():
        for fmt, data in files.items():
            path = out / f"{name}.{fmt}"
            path.write_bytes(data)
            written.append(path)
    page = html_page(
        document,
        images={name: f"{name}.svg" for name in figures_of(document)},
        links={name: f"{name}.png" for name in figures_of(document)},
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    written.append(index)
    return written


def inline_html(document: Mapping[str, Any]) -> str:
    """The report page as one self-contained HTML document, images as PNG data URIs."""
    figures = render_figures(document, formats=("png",))
    images = {
        name: "data:image/png;base64," + base64.b64encode(files["png"]).decode("ascii")
        for name, files in figures.items()
    }
    return html_page(document, images)
