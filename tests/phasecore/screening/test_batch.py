"""`phasescreen batch` embedded: a real 2 × 2 grid end to end, profiles computed once; the shipped grid files."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from cli import main
from phasecore.errors import InvalidReference, InvalidSettings
from phasecore.screening.batch import CSV_FIELDS, Grid, check_document, load_grid
from phasecore.screening.result import ScreeningResult
from tests.helpers.tiny import TINY_LANGUAGE, TINY_VISION, write_grid


def test_embedded_batch_screens_every_pair_on_shared_profiles(tiny_batch) -> None:
    assert tiny_batch.exit_code == 0, tiny_batch.printed
    document = check_document(tiny_batch.document())
    assert document["state"] == "succeeded" and document["name"] == "tiny"
    assert document["vision"] == TINY_VISION and document["language"] == TINY_LANGUAGE
    pairs = document["pairs"]
    assert [(p["vision_index"], p["language_index"]) for p in pairs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for pair in pairs:
        assert pair["state"] == "succeeded", pair["problem"]
        ScreeningResult.model_validate(pair["result"])
        assert pair["result"]["vision"]["identity"]["ref"] == pair["vision"]
        assert pair["result"]["settings"]["n"] == 20
    # 2 + 2 profiles, not 2 × 4: every pair of a row used the same vision profile, of a column the same language one
    assert len(list(tiny_batch.cache_dir.glob("*.npz"))) == 4
    keys = {(p["vision"], p["result"]["vision"]["profile_key"]) for p in pairs}
    keys |= {(p["language"], p["result"]["language"]["profile_key"]) for p in pairs}
    assert len(keys) == 4 and len({key for _, key in keys}) == 4

    # the summary table names every pair; the CSV has one row per pair with every column
    for pair in pairs:
        assert any(pair["vision"] in line and pair["language"] in line for line in tiny_batch.printed.splitlines())
    assert "4 of 4 pairs screened (succeeded)" in tiny_batch.printed
    table = list(csv.DictReader(io.StringIO(tiny_batch.csv.read_text())))
    assert len(table) == 4 and tuple(table[0]) == CSV_FIELDS
    first = pairs[0]["result"]["metrics"]
    assert float(table[0]["s_ntk_cross_centered"]) == pytest.approx(first["s_ntk_cross_centered"])

    # stored in the local database, so that `phasescreen study` counts them
    with sqlite3.connect(tiny_batch.home / "phasescreen.db") as db:
        stored = db.execute("SELECT vision_ref, language_ref, state FROM screenings").fetchall()
    assert sorted(stored) == sorted((p["vision"], p["language"], "succeeded") for p in pairs)


def test_a_model_that_cannot_load_fails_its_pairs_and_not_the_others(tiny_batch, local_env, tmp_path, capsys) -> None:
    """One broken language model: its pairs fail with the reason, the other pairs succeed; exit 1."""
    grid = write_grid(tmp_path / "grid.yaml", vision=TINY_VISION[:1], language=[TINY_LANGUAGE[0], "file:missing"])
    out = tmp_path / "out.json"
    argv = ["batch", str(grid), "--output", str(out), "--cache-dir", str(tiny_batch.cache_dir), "-q", "--no-store"]
    assert main(argv) == 1
    pairs = check_document(json.loads(out.read_text()))["pairs"]
    assert [p["state"] for p in pairs] == ["succeeded", "failed"]
    assert "missing" in pairs[1]["problem"]["detail"] and "language model profile" in pairs[1]["problem"]["title"]
    assert "1 of 2 pairs screened (partial)" in capsys.readouterr().out


def test_grid_errors_exit_2_with_what_to_change(tmp_path, capsys) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("vision: [unclosed\n")
    assert main(["batch", str(bad_yaml)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    twice = write_grid(tmp_path / "twice.yaml", vision=["timm:test_vit?weights=random", "timm:test_vit?weights=random"])
    assert main(["batch", str(twice)]) == 2
    assert "more than once" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "absent.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(InvalidSettings, match="non-empty list"):
        Grid.from_mapping({"vision": [], "language": ["pkg:all-minilm-l6-v2"]})
    with pytest.raises(InvalidReference):
        Grid.from_mapping({"vision": ["resnet50"], "language": ["pkg:all-minilm-l6-v2"]})


def test_the_shipped_grids() -> None:
    from phasecore.references.registry import check_reference, check_timm_name

    paper = load_grid("grids/paper-144.yaml")
    assert (len(paper.vision), len(paper.language), paper.n_pairs) == (12, 12, 144)
    assert paper.settings().n == 576
    for ref in paper.vision:
        assert ref.startswith("timm:")
        check_timm_name(ref.removeprefix("timm:"))  # real registry names
    assert all(ref.startswith("hf:") for ref in paper.language)
    assert {"hf:bert-base-uncased", "hf:gpt2", "hf:xlnet-base-cased"} <= set(paper.language)

    offline = load_grid("grids/offline.yaml")
    assert offline.n_pairs == 6
    for role, refs in (("vision", offline.vision), ("language", offline.language)):
        for ref in refs:
            check_reference(ref, role, model_root=None)  # installed packages or registry names: runs offline


def test_a_shipped_grid_is_found_by_name_from_anywhere(tmp_path, monkeypatch) -> None:
    from phasecore.errors import InvalidSettings

    monkeypatch.chdir(tmp_path)  # no grids/ here: the names resolve to the grids that ship with the package
    for name in ("offline", "offline.yaml", "grids/offline.yaml"):
        assert load_grid(name).n_pairs == 6
    (tmp_path / "offline.yaml").write_text("name: mine\nvision: [timm:resnet18]\nlanguage: [pkg:all-minilm-l6-v2]\n")
    assert load_grid("offline.yaml").name == "mine"  # a file that exists is read as it is
    with pytest.raises(InvalidSettings, match="does not exist"):
        load_grid("no-such-grid")
