"""Fixtures shared by the batch, gate and report tests: one real 2 × 2 batch of small random-init models, run
once per session through `phasescreen batch` (embedded default), whose profile cache later tests reuse.

Models: two timm test networks (160 px, random init) and a 2-layer, 32-wide BERT with MiniLM's tokenizer (random
init, under a model root built here) read out by mean and by [CLS] pooling: four profiles of a few seconds each.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# The tests never read the evidence file the package ships (`make evidence` writes it, and its figures would
# change what results say): those that need shipped evidence write their own and point this at it. A path
# under /dev/null never exists. Subprocesses inherit it.
os.environ["PHASESCREEN_EVIDENCE_PATH"] = "/dev/null/no-shipped-evidence-in-tests.json"

TINY_OPTIONS = {
    "n": 20,
    "probes": 1,
    "stability_steps": 2,
    "stability_subset": 10,
    "null_permutations": 20,
    "gt_folds": 2,
    "agop_k": 2,  # λ_1/λ_k needs U·M ≥ 8k: 16 of the 20 × 1 rows
}
TINY_VISION = ["timm:test_vit?weights=random", "timm:test_efficientnet_gn?weights=random"]
TINY_LANGUAGE = ["file:tiny-bert?weights=random", "file:tiny-bert?weights=random&pooling=cls"]


def option_flags(options: dict | None = None) -> list[str]:
    """``--option KEY=VALUE`` flags of the tiny settings (plus ``options``)."""
    return [f"--option={k}={v}" for k, v in {**TINY_OPTIONS, **(options or {})}.items()]


def build_tiny_bert(root: Path) -> Path:
    """``root/tiny-bert``: MiniLM's tokenizer files and a 2-layer, 32-wide BERT config (random init)."""
    from phasecore.references.registry import PACKAGES

    source = Path(importlib.import_module(PACKAGES["all-minilm-l6-v2"].module).get_model_path())
    target = root / "tiny-bert"
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.suffix not in (".safetensors", ".bin", ".onnx") and path.name != "config.json":
            shutil.copy(path, target / path.name)
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    (target / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models"))


@dataclass(frozen=True)
class TinyBatch:
    grid: Path
    results: Path
    csv: Path
    cache_dir: Path
    home: Path
    model_root: Path
    exit_code: int
    printed: str

    def document(self) -> dict:
        return json.loads(self.results.read_text())


def write_grid(path: Path, **overrides: object) -> Path:
    grid = {
        "name": "tiny",
        "dataset": "digits",
        "options": TINY_OPTIONS,
        "vision": TINY_VISION,
        "language": TINY_LANGUAGE,
        **overrides,
    }
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.fixture(scope="session")
def tiny_batch(tmp_path_factory: pytest.TempPathFactory, tiny_model_root: Path) -> TinyBatch:
    """`phasescreen batch` on the tiny 2 × 2 grid, embedded (profiles computed here, results stored locally)."""
    from cli import main

    tmp = tmp_path_factory.mktemp("tiny-batch")
    grid = write_grid(tmp / "tiny.yaml")
    results, csv, cache_dir, home = tmp / "tiny.results.json", tmp / "tiny.csv", tmp / "profiles", tmp / "home"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(printed):
        env.setenv("PHASESCREEN_MODEL_ROOT", str(tiny_model_root))
        env.setenv("PHASESCREEN_HOME", str(home))
        for name in ("PHASESCREEN_DATABASE_URL", "PHASESCREEN_REDIS_URL", "PHASESCREEN_SERVER"):
            env.delenv(name, raising=False)
        argv = ["batch", str(grid), "--output", str(results), "--csv", str(csv), "--cache-dir", str(cache_dir), "-q"]
        code = main(argv)
    return TinyBatch(grid, results, csv, cache_dir, home, tiny_model_root, code, printed.getvalue())


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, tiny_model_root: Path, tmp_path: Path) -> Path:
    """An embedded environment of its own (empty local database under tmp_path) that finds the tiny models."""
    monkeypatch.setenv("PHASESCREEN_MODEL_ROOT", str(tiny_model_root))
    monkeypatch.setenv("PHASESCREEN_HOME", str(tmp_path / "home"))
    for name in ("PHASESCREEN_DATABASE_URL", "PHASESCREEN_REDIS_URL", "PHASESCREEN_SERVER", "PHASESCREEN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"
