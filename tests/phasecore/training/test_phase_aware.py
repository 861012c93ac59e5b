"""Phase-aware alignment training (issue 22; phasecore.training, docs/phase-aware.md): the trainer, the four
methods of the paper's Table 2, the experiment's cache and its page. Tiny towers (random zoo towers of width 4,
which need no training), a tiny ``shapes`` (4 colours × 4 shapes, 16 px) and a few steps: seconds, not minutes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cli import build_parser, main
from phasecore.data.shapes import COLORS, SHAPES, held_out_groups
from phasecore.groundtruth.contrastive import unseen_classes
from phasecore.presentation.phase_aware_page import (
    BEGIN,
    END,
    PLACEHOLDER,
    placeholder_section,
    results_markdown,
    write_doc,
)
from phasecore.sources import load_encoder
from phasecore.threads import single_thread
from phasecore.training.align import (
    AlignSettings,
    align_pair,
    checkpoint_grid,
    examples_to_reach,
    trainable_names,
    value_folds,
)
from phasecore.training.experiment import ExperimentConfig, plan, run_experiment, run_key, summarise
from phasecore.training.methods import (
    METHODS,
    MethodSpec,
    ProbeSettings,
    measure_s_ntk,
    search_output_scale,
)

TINY_DATA = "shapes?colors=4&shapes=4&size=16"
VISION, TEXT = "zoo:shapes?tower=vision&mode=random&width=4", "zoo:shapes?tower=text&mode=random&width=4"
TINY = AlignSettings(
    dataset=TINY_DATA, examples=64, batch=16, folds=2, n_train=256, n_eval=64, probe=ProbeSettings(subset=8, steps=2)
)


@pytest.fixture(scope="module")
def towers() -> tuple[Any, Any]:
    return load_encoder(VISION), load_encoder(TEXT)


def test_the_checkpoint_grid_is_logarithmic() -> None:
    grid = checkpoint_grid(256, per_doubling=2)
    assert grid == [0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256]
    ratios = [b / a for a, b in zip(grid[6:], grid[7:], strict=False)]  # once the points are apart: ≈ √2
    assert all(1.3 < r < 1.5 for r in ratios), ratios
    assert checkpoint_grid(100, per_doubling=1) == [0, 1, 2, 4, 8, 16, 32, 64, 100]
    with pytest.raises(ValueError):
        checkpoint_grid(0)


def test_folds_interleave_the_kinds_and_train_on_no_held_out_value() -> None:
    groups = held_out_groups(10, 8, seed=1)
    folds = value_folds(groups, 3)
    assert sorted(g for fold in folds for g in fold) == list(range(len(groups))) == list(range(9))
    names = {"colors": list(COLORS), "shapes": list(SHAPES)}
    for fold in folds:
        assert {next(iter(groups[g]["held_out"])) for g in fold} == {"colors", "shapes"}
        unseen: set[int] = set()
        for g in fold:
            unseen |= unseen_classes(groups[g])
        trained = set(range(80)) - unseen
        for g in fold:  # no training class of the fold holds a value one of its groups holds out
            kind, values = next(iter(groups[g]["held_out"].items()))
            held = {names[kind].index(v) for v in values}
            assert all((c // 8 if kind == "colors" else c % 8) not in held for c in trained)
        assert len(trained) >= 32
    with pytest.raises(ValueError):
        value_folds(groups, 10)


@pytest.mark.parametrize("name", METHODS)
def test_each_method_runs_a_few_steps(name: str, towers: tuple[Any, Any]) -> None:
    record = align_pair(*towers, TINY, MethodSpec(name=name, every=2, refine=1))
    steps = [p["step"] for p in record["checkpoints"]]
    assert steps == [0, 1, 2, 3, 4] and record["checkpoints"][-1]["examples"] == 64
    assert all(np.isfinite(p["alignment_score"]) and len(p["s_g"]) == 4 for p in record["checkpoints"])
    assert record["checkpoints"][-1]["loss"] > 0 and set(record["reached"]) == {"0.3", "0.5"}
    assert record["reached"]["0.3"] == examples_to_reach(record["checkpoints"], 0.3)
    assert [f["train_classes"] for f in record["data"]["folds"]] == [4, 4]
    probes = record["costs"]["n_probes"]
    assert probes == 0 if name == "fixed" else probes > 0
    if name in ("adaptive", "regulariser"):  # both towers at steps 0 and 2, in both folds
        assert probes == 2 * 2 * 2
    assert json.loads(json.dumps(record, allow_nan=False)) == record  # the record is JSON as it stands


def test_what_trains_heads_last_blocks_or_all(towers: tuple[Any, Any]) -> None:
    vision, text = towers
    # METRICS §0's last:K; the conv tower's Sequential ends in a ReLU, so last:1 keeps only the layer after it
    assert trainable_names(vision, "last:1") == ["tower.head.weight", "tower.head.bias"]
    assert trainable_names(vision, "last:3")[:2] == ["tower.features.9.weight", "tower.features.9.bias"]
    assert trainable_names(text, "last:1")[0].startswith("tower.blocks.1.") and trainable_names(text, "heads") == []
    frozen = align_pair(*towers, TINY, MethodSpec(name="adaptive", every=2))
    heads = align_pair(*towers, replace(TINY, train="heads"), MethodSpec(name="adaptive", every=2))
    assert heads["costs"]["n_probes"] == 0  # nothing of a tower trains: the methods have nothing to act on
    assert frozen["checkpoints"][0] == heads["checkpoints"][0]  # the same start: towers, heads, groups
    with pytest.raises(ValueError, match="last:K"):
        AlignSettings(train="last:0")


def test_a_fold_whose_loss_diverges_stops_and_the_record_stays_json(
    towers: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import phasecore.training.align as align

    calls = {"n": 0}
    real = align.symmetric_info_nce

    def flaky(z_v: torch.Tensor, z_l: torch.Tensor, temperature: float) -> torch.Tensor:
        calls["n"] += 1
        loss = real(z_v, z_l, temperature)
        return loss * math.nan if calls["n"] == 3 else loss  # fold 0's second step (folds run in lockstep)

    monkeypatch.setattr(align, "symmetric_info_nce", flaky)
    record = align_pair(*towers, TINY, MethodSpec())
    assert record["diverged"] == [{"fold": 0, "step": 1}]
    assert [p["diverged_folds"] for p in record["checkpoints"]] == [0, 0, 1, 1, 1]
    assert json.loads(json.dumps(record, allow_nan=False)) == record


def test_the_adaptive_rate_follows_s_ntk(towers: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the measurement stubbed, every optimiser step of a tower runs at η0 · S_NTK of its last measurement;
    the heads at η0."""
    scripted = {"vision": [0.8, 0.5, 0.3], "language": [0.9, 0.6, 0.2]}
    calls: dict[int, int] = {}  # per probe input (one per fold and side)

    def stub(module: nn.Module, inputs: Any, **_: Any) -> tuple[float, None]:
        side = "vision" if isinstance(inputs, torch.Tensor) else "language"
        k = calls[id(inputs)] = calls.get(id(inputs), -1) + 1
        return scripted[side][k], None

    seen: dict[int, list[dict[str, float]]] = {}
    original = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        seen.setdefault(id(self), []).append({group["side"]: group["lr"] for group in self.param_groups})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    settings = replace(TINY, examples=6 * 16, lr=0.01)
    record = align_pair(*towers, settings, MethodSpec(name="adaptive", every=2), measure=stub)
    assert len(seen) == 2 and all(len(steps) == 6 for steps in seen.values())  # two folds, six steps each
    for steps in seen.values():
        for step, lrs in enumerate(steps):
            k = step // 2  # measured before steps 0, 2 and 4
            assert lrs["vision"] == pytest.approx(0.01 * scripted["vision"][k])
            assert lrs["language"] == pytest.approx(0.01 * scripted["language"][k])
            assert lrs["heads"] == pytest.approx(0.01)
    fold0 = [m for m in record["measurements"] if m["side"] == "vision" and m["fold"] == 0]
    assert [m["s_ntk"] for m in fold0] == scripted["vision"] and [m["step"] for m in fold0] == [0, 2, 4]
    assert record["checkpoints"][-1]["rate"] == {"vision": 0.3, "language": 0.2}


def test_the_regulariser_pulls_the_phases_together() -> None:
    method = MethodSpec(name="regulariser", lam=2.0).build()
    method.update(0, lambda side, alpha: {"vision": 0.9, "language": 0.5}[side])
    # vision lazier than language: vision's α falls (its rate rises), language's rises, by λ·gap/2 decades each
    assert method.alpha["vision"] == pytest.approx(10**-0.4) and method.alpha["language"] == pytest.approx(10**0.4)
    assert method.rate("vision") > 1 > method.rate("language")
    method.update(1, lambda side, alpha: None)  # both probes diverged: equal (S = 0), nothing moves
    assert method.alpha["vision"] == pytest.approx(10**-0.4)


def test_the_compatible_search_lands_near_the_target() -> None:
    smooth = search_output_scale(lambda a: a / (a + 0.2), target=0.6, tolerance=0.005, refine=8)
    assert smooth["bracketed"] and smooth["reached"] and smooth["alpha"] == pytest.approx(0.3, rel=0.03)
    # within the tolerance of the nearest S, the α nearest 1 wins: here S(10^-0.5) = 0.613
    assert search_output_scale(lambda a: a / (a + 0.2), tolerance=0.02)["alpha"] == pytest.approx(10**-0.5)
    assert search_output_scale(lambda a: None)["alpha"] == 1.0  # every probe diverged: no change
    # a tiny real tower (a tanh network, lazy at α = 1): its S_NTK(α) falls steeply near α ≈ 0.03
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 4))
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    probe = ProbeSettings(subset=16, steps=10)
    with single_thread():  # S near the steep part moves with float rounding (METRICS §3): one thread, as training
        found = search_output_scale(lambda a: measure_s_ntk(tower, x, alpha=a, probe=probe)[0], target=0.6, refine=8)
        assert found["bracketed"] and abs(found["s_ntk"] - 0.6) <= 0.1, found["trace"]
        assert 0.01 < found["alpha"] < 0.1
        assert measure_s_ntk(tower, x, alpha=1.0, probe=probe)[0] > 0.95  # the caller's tower is untouched: lazy


def test_the_cli_parses_and_runs_a_tiny_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    code = main(
        ["align", "--vision", VISION, "--language", TEXT, "--dataset", TINY_DATA, "--method", "regulariser",
         "--examples", "32", "--batch", "16", "--folds", "2", "--n-train", "256", "--n-eval", "64", "--every", "1",
         "--probe-subset", "8", "--probe-steps", "2", "--lam", "1", "-q", "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["method"] == {"name": "regulariser", "every": 1, "lam": 1.0, "alpha_min": 0.01, "alpha_max": 10.0}
    assert record["settings"]["examples"] == 32 and record["costs"]["n_probes"] == 2 * 2 * 2
    assert "examples: alignment_score" in capsys.readouterr().out
    args = build_parser().parse_args(["phase-aware", "--preset", "smoke", "--seeds", "0,1", "--dry-run"])
    assert args.func.__name__ == "run_phase_aware" and args.seeds == "0,1"
    assert main(["align", "--vision", VISION, "--language", TEXT, "--train", "some", "-q"]) == 2
    assert main(["phase-aware", "--preset", "smoke", "--cache", str(tmp_path / "c"), "--dry-run"]) == 0
    assert "9 runs (0 cached)" in capsys.readouterr().out


def _tiny_experiment() -> ExperimentConfig:
    return ExperimentConfig(
        preset="test", dataset=TINY_DATA, width=4, seeds=(0, 1), starts=("random",), methods=("fixed", "adaptive"),
        ceiling=False, screen=False, align=replace(TINY, examples=32), method=MethodSpec(every=1),
    )  # fmt: skip


def test_the_experiment_caches_its_runs_and_its_results_round_trip(tmp_path: Path) -> None:
    config = _tiny_experiment()
    lines: list[str] = []
    first = run_experiment(config, tmp_path, log=lines.append)
    assert len(first["runs"]) == len(plan(config)) == 4
    assert all((tmp_path / "runs" / f"{run_key(spec, config)}.json").is_file() for spec in plan(config))
    lines.clear()
    again = run_experiment(config, tmp_path, log=lines.append)
    assert sum(": cached (" in line for line in lines) == 4  # nothing trained the second time
    assert [r["run"] for r in again["runs"]] == [r["run"] for r in first["runs"]]
    text = json.dumps(again, allow_nan=False)
    assert json.loads(text)["summary"] == json.loads(json.dumps(summarise(json.loads(text))))
    cells = {c["method"]: c for c in again["summary"]["cells"]}
    assert cells["fixed"]["final"]["n"] == 2 and cells["fixed"]["costs"]["n_probes"] == 0
    assert again["summary"]["ordering"]["random"]["by_examples"]  # ranked, ties in tiers


def test_the_page_gets_its_tables_between_the_markers(tmp_path: Path) -> None:
    config = _tiny_experiment()
    document = run_experiment(config, tmp_path / "cache")
    document |= {"command": "phasescreen phase-aware --preset test", "commit": "abc"}
    page = tmp_path / "page.md"
    page.write_text(f"# Phase-aware training\n\nprose\n\n{placeholder_section()}\n\nmore prose\n")
    written = write_doc(page, document, tmp_path / "figures")
    text = page.read_text()
    assert PLACEHOLDER not in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "prose" in text and "more prose" in text and "Table 2 beside this experiment: random" in text
    assert "400M (0.018)" in text and "the paper's (compatible > regulariser > adaptive > fixed)" in text
    assert {p.name for p in written} == {"alignment_curves.svg", "alignment_curves.png", "page.md"}
    assert results_markdown(document, figure="f").startswith(BEGIN)
    write_doc(page, document, None)  # rewriting replaces the section, it does not add one
    assert page.read_text().count(BEGIN) == 1
