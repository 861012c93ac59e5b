"""The tiny screening settings and models of the end-to-end tests (the fixtures that build them live in
tests/conftest.py): the 2 × 2 grid of small random-init models, its ``--option`` flags, the grid file, the same
grid as a batch request body, a ``phasescreen gate`` command line, and the tiny BERT's model root.

Models: two timm test networks (160 px, random init) and a 2-layer, 32-wide BERT with MiniLM's tokenizer (random
init, under a model root built by :func:`build_tiny_bert`) read out by mean and by [CLS] pooling.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import yaml

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


def batch_request(**overrides: object) -> dict:
    return {
        "vision": TINY_VISION,
        "language": TINY_LANGUAGE,
        "dataset": "digits",
        "options": TINY_OPTIONS,
        "name": "tiny",
        **overrides,
    }


def gate_argv(vision: str = TINY_VISION[0], language: str = TINY_LANGUAGE[0], *extra: str) -> list[str]:
    return ["gate", "--vision", vision, "--language", language, "--dataset", "digits", *option_flags(), *extra]
