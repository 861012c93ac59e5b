"""The local profile cache of `phasescreen screen` / `batch` keys profiles by the model's content version, as the
service does: a `file:` model whose bytes changed is profiled again, never served from its old profile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli import main
from tests.helpers.tiny import option_flags

VISION = "timm:test_vit?weights=random"
LANGUAGE = "file:tiny-bert"  # with weights of its own: the bytes this test changes


def _save_weights(folder: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    BertModel(BertConfig.from_pretrained(folder)).save_pretrained(folder, safe_serialization=True)


def _screen(cache: Path, out: Path) -> dict:
    argv = ["screen", "--vision", VISION, "--language", LANGUAGE, "--dataset", "digits", "--output", str(out)]
    assert main([*argv, "--cache-dir", str(cache), "--no-store", "--quiet", *option_flags()]) == 0
    return json.loads(out.read_text())


def _language_key(result: dict) -> str:
    return result["language"]["profile_key"]


def test_a_changed_file_model_is_profiled_again(local_env, tiny_model_root: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "models"
    shutil.copytree(tiny_model_root, root)
    monkeypatch.setenv("PHASESCREEN_MODEL_ROOT", str(root))
    _save_weights(root / "tiny-bert", seed=1)
    cache = tmp_path / "profiles"

    first = _screen(cache, tmp_path / "first.json")
    assert len(list(cache.glob("*.npz"))) == 2
    again = _screen(cache, tmp_path / "again.json")  # unchanged: both profiles from the cache
    assert len(list(cache.glob("*.npz"))) == 2
    assert _language_key(again) == _language_key(first)

    _save_weights(root / "tiny-bert", seed=2)  # new bytes under the same reference
    changed = _screen(cache, tmp_path / "changed.json")
    assert len(list(cache.glob("*.npz"))) == 3  # the language model profiled again; the vision one reused
    assert _language_key(changed) != _language_key(first)
    assert changed["vision"]["profile_key"] == first["vision"]["profile_key"]


@pytest.mark.parametrize("ref", ["timm:test_vit?weights=random"])
def test_models_without_a_known_version_keep_their_key(ref: str) -> None:
    from phasecore.screening.pipeline import profile_key, versioned_profile_key
    from phasecore.settings import EngineSettings

    settings = EngineSettings(n=20)
    assert versioned_profile_key(ref, "vision", "digits", settings) == profile_key(ref, "vision", "digits", settings)
