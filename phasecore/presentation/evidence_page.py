"""The numbers section of docs/evidence.md, written from an evidence file and the batch document of its run.

``make evidence`` calls ``phasescreen evidence doc``, which renders :func:`evidence_markdown` between the markers
``<!-- evidence:begin -->`` and ``<!-- evidence:end -->`` of the page (everything outside them is prose written by
hand) and the batch report's figures next to it. Nothing here is typed by hand: every figure comes from the two
files, so rerunning the command on the same files gives the same text.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from phasecore.presentation.evidence_zoo import rules_against_alignment, zoo_section
from phasecore.presentation.report import blend_of, dose_response_series, log10_of
from phasecore.screening.batch import RULES, as_result
from phasecore.study.quality import CLAIMED_ACCURACY, rule_correlations

BEGIN, END = "<!-- evidence:begin -->", "<!-- evidence:end -->"
_RULE_NAMES = {
    "agop_rule": "AGOP ratio > 1e6",
    "combined_rule": "ΔNTK × log(AGOP) > 2.5",
    "ntk_difference_rule": "ΔNTK rule",
    "cross_phase_rule": "cross-phase rule",
}


def num(value: Any, spec: str = ".3f") -> str:
    """A table cell: "—" for None or a non-finite float, yes / no for a bool, a number in ``spec``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.0f}%"


def rules_table(entry: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The study of one stratum, each rule beside the paper's claim (METRICS §8); Spearman's ρ over all the
    stratum's ``records`` (inconclusive included) even when the study is insufficient."""
    lines = [
        "| rule | paper's claim (not verified) | measured accuracy (n decided) | AUROC | Brier "
        "| Spearman ρ vs alignment_score (p, n) | CV threshold | accuracy if inconclusive counted failed / aligned |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rules = entry.get("rules") or {}
    # a study with figures carries each rule's ρ; an insufficient one has none, so ρ is computed here
    correlations = {} if rules else rule_correlations(records)
    for rule in RULES:
        figures = rules.get(rule) or {}
        claim = CLAIMED_ACCURACY.get(rule)
        ranges = figures.get("range_if_inconclusive") or {}
        spread = " / ".join(_pct((ranges.get(side) or {}).get("accuracy")) for side in ("as_failed", "as_aligned"))
        threshold = (figures.get("cv_threshold") or {}).get("threshold")
        rho = figures.get("spearman_rho") or correlations.get(rule) or {}
        lines.append(
            f"| {_RULE_NAMES[rule]} | {'claim: ' + _pct(claim) if claim is not None else '—'} "
            f"| {_pct(figures.get('accuracy'))} ({figures.get('n', entry.get('n', 0))}) | {num(figures.get('auroc'))} "
            f"| {num(figures.get('brier'))} | {num(rho.get('rho'), '+.2f')} ({num(rho.get('p'), '.2g')}, "
            f"{rho.get('n')}) | {num(threshold)} | {spread} |"
        )
    logistic = entry.get("logistic") or {}
    lines.append(
        f"| logistic model (6 features) | — | {_pct(logistic.get('accuracy'))} "
        f"({logistic.get('n', entry.get('n', 0))}) "
        f"| {num(logistic.get('auroc'))} | {num(logistic.get('brier'))} | — | — | — |"
    )
    return lines


def dose_table(document: Mapping[str, Any]) -> list[str]:
    """The dose-response figure's numbers: per graded family, each panel's value at every blend level t."""
    lines: list[str] = []
    for curve in dose_response_series(document):
        varied = "vision" if curve["side"] == "vision" else "language"
        lines += [
            f"**{curve['family']}** ({varied} varied) × `{curve['other']}`:",
            "",
            "| t | " + " | ".join(curve["values"]) + " |",
            "|---:|" + "---:|" * len(curve["values"]),
        ]
        for k, t in enumerate(curve["t"]):
            cells = [num(values[k]) for values in curve["values"].values()]
            lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def pairs_table(document: Mapping[str, Any]) -> list[str]:
    """One row per pair of the run: blend levels, the measured outcome and the rules' inputs."""
    lines = [
        "| vision | t_v | language | t_l | alignment_score | outcome | p_above | p_below | seen acc. "
        "| log10 AGOP v / l | ΔNTK | combined | S_cross centered (p) | AGOP / combined rule says fail |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for pair in document["pairs"]:
        result = as_result(pair.get("result"))
        (v_base, v_t), (l_base, l_t) = blend_of(pair["vision"]), blend_of(pair["language"])
        if result is None:
            lines.append(f"| {v_base} | {v_t:g} | {l_base} | {l_t:g} | — | {pair.get('state')} |" + " — |" * 8)
            continue
        m, gt = result.metrics, result.ground_truth
        p = result.predictions
        lines.append(
            f"| {v_base} | {v_t:g} | {l_base} | {l_t:g} "
            f"| {num(None if gt is None else gt.alignment_score, '+.3f')} | {'—' if gt is None else gt.outcome} "
            f"| {num(None if gt is None else gt.p_above)} | {num(None if gt is None else gt.p_below)} "
            f"| {num(None if gt is None else gt.seen_accuracy, '.2f')} "
            f"| {num(log10_of(m.agop_ratio_vision), '.2f')} / {num(log10_of(m.agop_ratio_language), '.2f')} "
            f"| {num(m.delta_ntk)} | {num(m.combined)} "
            f"| {num(m.s_ntk_cross_centered)} ({num(m.s_ntk_cross_centered_null.p_value)}) "
            f"| {' / '.join(num(p[r].predicts_failure if r in p else None) for r in ('agop_rule', 'combined_rule'))} |"
        )
    return lines


def evidence_markdown(
    evidence: Mapping[str, Any], document: Mapping[str, Any], *, figures: Sequence[str] = (), figure_dir: str = ""
) -> str:
    """The numbers section: how the run was made, the study of each stratum beside the claims, every pair,
    and the figures (``figures`` names under ``figure_dir``, relative to the page)."""
    settings = evidence.get("settings") or {}
    grid = settings.get("grid") or {}
    strata = (evidence.get("study") or {}).get("strata") or []
    out = [
        BEGIN,
        "<!-- written by `phasescreen evidence doc` (make evidence); edits here are overwritten -->",
        "",
        f"- **Command:** `{evidence.get('command')}`",
        f"- **Commit:** `{evidence.get('commit')}`; evidence file written {evidence.get('created_at')}; "
        f"engine {settings.get('engine_version')}",
        f"- **Grid:** `{grid.get('name', document.get('name'))}` on dataset `{document.get('dataset')}`, options "
        f"`{document.get('options')}`: {len(document.get('vision', []))} vision × "
        f"{len(document.get('language', []))} language = {len(document['pairs'])} pairs, "
        f"{sum(p.get('state') == 'succeeded' for p in document['pairs'])} succeeded",
        f"- **Records:** {len(evidence.get('records') or [])} in {len(strata)} stratum/strata",
        "",
    ]
    for entry in strata:
        stratum = entry.get("stratum") or {}
        n, n_failed = entry.get("n", 0), entry.get("n_failed", 0)
        out += [
            f"### Stratum `{str(stratum.get('key'))[:12]}` (dataset `{stratum.get('dataset')}`)",
            "",
            f"{n} decided pairs ({n - n_failed} aligned, {n_failed} failed), {entry.get('n_inconclusive', 0)} "
            f"inconclusive; failure base rate {_pct(entry.get('failure_base_rate'))}; status "
            f"**{entry.get('status')}**" + (f": {entry['reason']}" if entry.get("reason") else "") + ".",
            "",
            *rules_table(
                entry,
                [r for r in evidence.get("records") or [] if (r.get("stratum") or {}).get("key") == stratum.get("key")],
            ),
            "",
        ]
    if any((r.get("vision") or "").startswith("zoo:") for r in evidence.get("records") or []):
        alpha = float(((strata[0].get("stratum") or {}).get("settings") or {}).get("outcome_alpha", 0.05))
        out += zoo_section(evidence, document, alpha=alpha)
    out += ["### Dose-response (blends)", "", *dose_table(document)]
    out += ["### Every pair", "", *pairs_table(document), ""]
    for name in figures:
        out += [f"![{name}]({figure_dir.rstrip('/')}/{name}.svg)", ""]
    out.append(END)
    return "\n".join(out)


def replace_section(page: str, section: str, *, begin: str = BEGIN, end: str = END) -> str:
    """``page`` with the text between the markers ``begin`` and ``end`` (markers included; the evidence page's by
    default) replaced by ``section``; appended at the end when the page has no markers. A marker counts only at
    the start of a line, so prose that names it (in backticks, say) is left alone."""
    start = next((m.start() for m in re.finditer(re.escape(begin), page) if _at_line_start(page, m.start())), -1)
    stop = next(
        (m.start() for m in re.finditer(re.escape(end), page) if m.start() > start and _at_line_start(page, m.start())),
        -1,
    )
    if start == -1 or stop == -1:
        return page.rstrip("\n") + "\n\n" + section + "\n"
    return page[:start] + section + page[stop + len(end) :]


def _at_line_start(page: str, index: int) -> bool:
    return index == 0 or page[index - 1] == "\n"


def write_doc(page: Path, evidence: Mapping[str, Any], document: Mapping[str, Any], figure_dir: Path) -> list[Path]:
    """Write the batch report's figures into ``figure_dir`` and the numbers section into ``page``."""
    from phasecore.presentation.report import write_report

    written = write_report(document, figure_dir)
    if any(str(r.get("vision", "")).startswith("zoo:") for r in evidence.get("records") or []):
        figure = rules_against_alignment(evidence.get("records") or [])
        for suffix in (".svg", ".png"):
            path = figure_dir / f"rules_against_alignment{suffix}"
            figure.savefig(path, dpi=110)
            written.append(path)
    names = [p.stem for p in written if p.suffix == ".svg"]
    relative = os.path.relpath(figure_dir.resolve(), page.resolve().parent)
    section = evidence_markdown(evidence, document, figures=names, figure_dir=Path(relative).as_posix())
    text = page.read_text(encoding="utf-8") if page.exists() else "# Evidence\n"
    page.write_text(replace_section(text, section), encoding="utf-8")
    return [*written, page]
