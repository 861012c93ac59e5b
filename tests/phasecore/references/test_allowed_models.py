"""PHASESCREEN_ALLOWED_MODELS: hf: and timm: names by organisation and name pattern, checked from names
alone (the API's cheap check)."""

from __future__ import annotations

import pytest

from phasecore.errors import SourceNotAllowed
from phasecore.references.refs import ModelRef, check_allowed_models, parse_model_patterns
from phasecore.references.registry import check_reference, timm_model_names
from store.settings import ServiceSettings

PATTERNS = ("hf:sentence-transformers/*", "hf:google/bert_uncased_L-?_H-*", "timm:resnet*")


@pytest.mark.parametrize(
    "reference",
    [
        "hf:sentence-transformers/all-MiniLM-L6-v2",
        "hf:sentence-transformers/all-MiniLM-L6-v2@main?pooling=mean",
        "hf:google/bert_uncased_L-2_H-128_A-2",
        "timm:resnet18",
        "timm:resnet50.a1_in1k?weights=random",
        "file:my-vit.safetensors?arch=vit_small_patch16_224",  # no pattern names file: (allowed_sources does)
        "pkg:efficientnet-lite0",
    ],
)
def test_matching_names_pass(reference: str) -> None:
    check_allowed_models(ModelRef.parse(reference), PATTERNS)


@pytest.mark.parametrize(
    "reference",
    [
        "hf:bert-base-uncased",  # no organisation
        "hf:sentence-transformers-evil/all-MiniLM-L6-v2",
        "hf:Sentence-Transformers/all-MiniLM-L6-v2",  # case-sensitive
        "hf:google/bert_uncased_L-12_H-768_A-12",  # ? is one character
        "hf:google/gemma-7b",
        "timm:vit_small_patch16_224",
        "timm:xresnet18",
    ],
)
def test_other_names_are_refused(reference: str) -> None:
    with pytest.raises(SourceNotAllowed, match="not among"):
        check_allowed_models(ModelRef.parse(reference), PATTERNS)


def test_a_pattern_restricts_only_its_own_source() -> None:
    check_allowed_models(ModelRef.parse("timm:vit_small_patch16_224"), ("hf:org/*",))
    with pytest.raises(SourceNotAllowed):
        check_allowed_models(ModelRef.parse("hf:other/x"), ("hf:org/*",))


def test_the_registry_check_applies_them_without_torch() -> None:
    if "resnet18" not in timm_model_names():
        pytest.skip("timm is not installed")
    assert check_reference("timm:resnet18", "vision", allowed_models=PATTERNS).name == "resnet18"
    with pytest.raises(SourceNotAllowed):
        check_reference("hf:gpt2", "language", allowed_models=PATTERNS)
    check_reference("hf:gpt2", "language", allowed_models=())  # empty: no restriction


def test_settings_split_and_check_the_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASESCREEN_ALLOWED_MODELS", " hf:sentence-transformers/* , timm:resnet* ,")
    assert ServiceSettings().allowed_models == ("hf:sentence-transformers/*", "timm:resnet*")
    monkeypatch.delenv("PHASESCREEN_ALLOWED_MODELS")
    assert ServiceSettings().allowed_models == ()
    for bad in ("pkg:efficientnet-*", "resnet*", "hf:", "timm:res\x1bnet"):
        monkeypatch.setenv("PHASESCREEN_ALLOWED_MODELS", bad)
        with pytest.raises(ValueError, match="model pattern"):
            ServiceSettings()
    with pytest.raises(ValueError):
        parse_model_patterns(["file:*"])
