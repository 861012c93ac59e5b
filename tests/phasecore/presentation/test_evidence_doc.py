"""The numbers section of docs/evidence.md: written from an evidence file and a batch document, between markers,
the prose around them untouched, the same files giving the same text."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cli import main
from phasecore.presentation.evidence_page import BEGIN, END, evidence_markdown, replace_section
from phasecore.study.evidence import write_evidence
from tests.helpers.results import blend_document
from tests.helpers.study import hidden_records


def test_the_section_sits_between_markers_and_keeps_the_prose() -> None:
    page = f"# Evidence\n\nprose before\n\n{BEGIN}\nold numbers\n{END}\n\nprose after\n"
    updated = replace_section(page, f"{BEGIN}\nnew\n{END}")
    assert updated == f"# Evidence\n\nprose before\n\n{BEGIN}\nnew\n{END}\n\nprose after\n"
    assert replace_section("# Evidence\n", f"{BEGIN}\nx\n{END}").endswith(f"{BEGIN}\nx\n{END}\n")


def test_evidence_doc_writes_the_study_beside_the_claims_and_every_pair(tmp_path: Path, capsys) -> None:
    evidence_path = tmp_path / "shipped.json"
    evidence = write_evidence(evidence_path, hidden_records(seed=1), command="make evidence", commit="abc1234")
    results = tmp_path / "evidence.results.json"
    document = blend_document()
    results.write_text(json.dumps(document))
    page = tmp_path / "docs" / "evidence.md"
    page.parent.mkdir()
    page.write_text(f"# Evidence\n\nhand-written prose\n\n{BEGIN}\n{END}\n")
    args = ["evidence", "doc", "--evidence", str(evidence_path), "--results", str(results), "--page", str(page)]
    assert main([*args, "--figures", str(tmp_path / "docs" / "evidence")]) == 0
    text = page.read_text()
    assert text.startswith("# Evidence\n\nhand-written prose\n") and text.count(BEGIN) == 1
    assert "`make evidence`" in text and "`abc1234`" in text
    assert "| AGOP ratio > 1e6 | claim: 94% |" in text and "| ΔNTK × log(AGOP) > 2.5 | claim: 96% |" in text
    stratum = evidence["study"]["strata"][0]
    assert f"{stratum['n']} decided pairs" in text
    # one row per pair, with its blend levels
    assert "| pkg:efficientnet-lite0 | 0.5 | pkg:all-minilm-l6-v2 | 1 |" in text
    assert text.count("| pkg:efficientnet-lite0 |") == len(document["pairs"])
    assert "![dose_response](evidence/dose_response.svg)" in text
    assert (tmp_path / "docs" / "evidence" / "dose_response.png").exists()
    # the same files give the same text
    again = evidence_markdown(evidence, document, figures=["x"], figure_dir="d")
    assert again == evidence_markdown(evidence, document, figures=["x"], figure_dir="d")
    assert main([*args[:-2], "--page", str(page), "--results", str(tmp_path / "missing.json")]) == 2
    assert "phasescreen evidence doc: error" in capsys.readouterr().err


def test_every_pair_is_re_decided_at_each_tau_from_its_stored_group_scores() -> None:
    from phasecore.presentation.evidence_zoo import tau_lines, tau_sensitivity

    def record(scores: list[float], cka: float, agop: float) -> dict:
        return {
            "group_scores": [{"s_g": s} for s in scores],
            "cka": cka,
            "log_agop": math.log10(agop),
            "predictions": {"agop_rule": {"value": agop}},
            "stratum": {"settings": {"failure_threshold": 0.2}},
        }

    # six groups: a pair at +0.6 is aligned for τ < 0.6; one at 0 is failed for τ > 0 (all six below τ)
    high = [record([0.6, 0.7, 0.5, 0.6, 0.65, 0.55], cka=0.9, agop=10.0) for _ in range(3)]
    low = [record([0.0, 0.05, -0.05, 0.02, -0.02, 0.0], cka=0.1, agop=1e3) for _ in range(3)]
    rows = {row["tau"]: row for row in tau_sensitivity(high + low, [0.1, 0.8], alpha=0.05)}
    assert (rows[0.1]["aligned"], rows[0.1]["failed"]) == (3, 3)
    assert (rows[0.8]["aligned"], rows[0.8]["failed"], rows[0.8]["inconclusive"]) == (0, 6, 0)
    # CKA is a similarity (low: failure), the AGOP ratio a rule (high: failure): both separate the outcomes
    assert rows[0.1]["auroc"]["cka"] == 1.0 and rows[0.1]["auroc"]["agop_rule"] == 1.0
    assert rows[0.8]["auroc"]["cka"] is None  # one outcome only: no AUROC
    text = "\n".join(tau_lines(high + low, 0.05, 0.2))
    assert "| 0.2 (this run) |" in text and "| 0.15 |" in text


def test_a_marker_named_in_prose_is_not_the_section() -> None:
    """Only a marker at the start of a line opens or closes the generated section: a page whose prose names the
    markers (in backticks) keeps that sentence, and the section lands between the real markers."""
    from phasecore.presentation.evidence_page import replace_section

    begin, end = "<!-- x:begin -->", "<!-- x:end -->"
    page = f"written between `{begin}` and `{end}`.\n\n## Results\n\n{begin}\nold\n{end}\n\ntail\n"
    out = replace_section(page, f"{begin}\nnew\n{end}", begin=begin, end=end)
    assert out == f"written between `{begin}` and `{end}`.\n\n## Results\n\n{begin}\nnew\n{end}\n\ntail\n"
    # without markers on their own lines, the section is appended
    assert replace_section("prose only\n", "S", begin=begin, end=end) == "prose only\n\nS\n"
