"""Reports: figures and counts on a planted batch with a known answer; the page renders in headless Chromium with
every image loaded and no console error; `phasescreen report` on a real batch file."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli import main
from phasecore.presentation.report import FIGURES, inline_html, rule_counts, write_report
from tests.helpers.results import blend_document, planted_document

RULES = ("agop_rule", "combined_rule", "ntk_difference_rule", "cross_phase_rule")


def test_rule_counts_have_the_planted_answer() -> None:
    document = planted_document()
    combined = rule_counts(document, "combined_rule")
    # rows: predicts failure / not; columns: measured failed / aligned
    assert combined["counts"] == [[2, 1], [0, 2]] and combined["n"] == 5 and combined["accuracy"] == 0.8
    assert rule_counts(document, "agop_rule")["accuracy"] == 0.4
    assert rule_counts(document, "cross_phase_rule")["accuracy"] == 0.0
    undetermined = rule_counts(document, "ntk_difference_rule")
    assert undetermined["n"] == 0 and undetermined["accuracy"] is None and undetermined["undetermined"] == 5


def test_report_files_and_inline_page(tmp_path: Path) -> None:
    document = planted_document()
    written = write_report(document, tmp_path)
    assert {p.name for p in written} == {f"{n}.{ext}" for n in FIGURES for ext in ("png", "svg")} | {"index.html"}
    for path in written:
        assert path.stat().st_size > 1000, path
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written if p.suffix == ".png")
    page = (tmp_path / "index.html").read_text()
    for name in FIGURES:
        assert f'src="{name}.svg"' in page and f'href="{name}.png"' in page
    assert ">failed</td>" in page  # the pair that failed to compute is listed, not hidden
    assert page.count("<tr>") == 1 + 6  # header + every pair

    inline = inline_html(document)
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', inline)
    assert len(sources) == len(FIGURES)
    assert all(base64.b64decode(s).startswith(b"\x89PNG") for s in sources)


_PROBE = """<script>
window.__errors = [];
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); __consoleError(...args); };
window.addEventListener("error", e => window.__errors.push("error: " + (e.message
  || (e.target && (e.target.src || e.target.href)))), true);
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "render-probe";
  out.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    errors: window.__errors,
    title: document.title,
  });
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(index: Path) -> dict:
    """Open ``index`` (a copy with a probe script in its head) in headless Chromium; what the page saw."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    probed = index.with_name("probe.html")
    probed.write_text(index.read_text().replace("<head>", "<head>" + _PROBE, 1))
    profile = index.parent / ".chromium-profile"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_report_of_a_real_batch_renders_in_chromium(tiny_batch, tmp_path: Path, capsys) -> None:
    """`phasescreen report FILE --output DIR` on the real 2 × 2 batch; Chromium loads every image, no errors."""
    out = tmp_path / "report"
    assert main(["report", str(tiny_batch.results), "--output", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "index.html") in printed and len(printed) == 2 * len(FIGURES) + 1
    seen = render_in_chromium(out / "index.html")
    assert seen == {"images": len(FIGURES), "loaded": len(FIGURES), "errors": [], "title": "phasescreen batch tiny"}


def test_the_chromium_check_sees_a_missing_image(tmp_path: Path) -> None:
    write_report(planted_document(), tmp_path)
    (tmp_path / "model_spectra.svg").unlink()
    seen = render_in_chromium(tmp_path / "index.html")
    assert seen["images"] == len(FIGURES) and seen["loaded"] == len(FIGURES) - 1
    assert any("model_spectra.svg" in error for error in seen["errors"])


def test_report_of_something_else_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PHASESCREEN_SERVER", raising=False)
    not_a_batch = tmp_path / "x.json"
    not_a_batch.write_text(json.dumps({"metrics": {}}))
    assert main(["report", str(not_a_batch), "--output", str(tmp_path / "r")]) == 2
    assert "not a phasescreen batch document" in capsys.readouterr().err
    assert main(["report", "0000-no-such-file", "--output", str(tmp_path / "r")]) == 2
    assert "--server" in capsys.readouterr().err


def test_dose_response_follows_the_blend(tmp_path: Path) -> None:
    from phasecore.presentation.report import blend_of, dose_response_series, figures_of

    assert blend_of("pkg:efficientnet-lite0?blend=0.25&seed=2") == ("pkg:efficientnet-lite0", 0.25)
    assert blend_of("timm:resnet18?weights=random") == ("timm:resnet18", 1.0)
    assert blend_of("pkg:all-minilm-l6-v2") == ("pkg:all-minilm-l6-v2", 0.0)
    document = blend_document()
    curves = {(c["side"], c["other"]): c for c in dose_response_series(document)}
    vision_curve = curves[("vision", "pkg:all-minilm-l6-v2")]  # the language side pretrained
    assert vision_curve["family"] == "pkg:efficientnet-lite0" and vision_curve["t"] == [0.0, 0.5, 1.0]
    assert vision_curve["values"]["log10 AGOP ratio, vision"] == pytest.approx([6.0, 4.0, 2.0])
    assert vision_curve["values"]["alignment_score (measured, §7)"] == pytest.approx([0.5, 0.3, 0.1])
    assert vision_curve["lower_bound"]["log10 AGOP ratio, vision"] == [False, True, False]  # t = 0.5 censored
    assert not any(vision_curve["lower_bound"]["log10 AGOP ratio, language"])
    language_curve = curves[("language", "pkg:efficientnet-lite0")]
    assert language_curve["t"] == [0.0, 1.0]
    assert language_curve["values"]["alignment_score (measured, §7)"] == pytest.approx([0.5, 0.2])
    assert set(curves) == {("vision", "pkg:all-minilm-l6-v2"), ("language", "pkg:efficientnet-lite0")}
    assert "dose_response" in figures_of(document) and "dose_response" not in figures_of(planted_document())
    written = {p.name for p in write_report(document, tmp_path)}
    assert {"dose_response.png", "dose_response.svg"} <= written
    assert "dose_response.svg" in (tmp_path / "index.html").read_text()
