"""Model references: option values cannot smuggle options, control characters are refused, and every
valid form round-trips through canonical()."""

from __future__ import annotations

import pytest

from phasecore.errors import InvalidReference
from phasecore.references.refs import ModelRef


@pytest.mark.parametrize(
    "text",
    [
        "file:x.safetensors?arch=a%26weights%3Drandom",  # would re-parse as arch=a & weights=random
        "file:x.safetensors?arch=a%3Fb",
        "file:x.safetensors?arch=a%3Db",
        "file:x.safetensors?arch=%2541",  # decodes to %41, which would decode again to A
        "file:x.safetensors?arch=a%2Bb",  # decodes to +, which would re-parse as a space
        "file:x.safetensors?arch=a+b",  # a space
        "file:x.safetensors?arch=a%23b",
        "file:x.safetensors?arch=a#b",
        "file:x?revision=v1%26arch%3Dresnet18",
        "file:x.safetensors?arch=resnet18%0a",
        "file:x.safetensors?arch=resnet18%00",
        "timm:resnet18\n?weights=random",
        "timm:res\x00net18",
        "timm:resnet18\x1b[31m",
        "hf:org/na\u202eme",  # bidi override
        "hf:org/name\u200b",  # zero-width space
        "timm:resnet18?weights=random&weights=random",
    ],
)
def test_smuggled_or_control_values_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        ModelRef.parse(text)


def test_the_attack_does_not_become_another_option() -> None:
    with pytest.raises(InvalidReference) as info:
        ModelRef.parse("file:x.safetensors?arch=a%26weights%3Drandom")
    assert "once decoded" in str(info.value)


def test_direct_construction_refuses_unsafe_values() -> None:
    with pytest.raises(InvalidReference):
        ModelRef.parse(ModelRef("file", "x.safetensors"), arch="a&weights=random")
    with pytest.raises(InvalidReference):
        ModelRef("file", "x", revision="v1&seed=3").validate()
    with pytest.raises(InvalidReference):
        ModelRef("file", "a?weights=random").validate()


VALID = [
    "timm:resnet18",
    "timm:resnet18?weights=random",
    "timm:resnet18?weights=random&seed=7",
    "timm:resnet18.a1_in1k",
    "timm:vit_small_patch16_224@augreg_in21k",
    "timm:resnet18?blend=0.25",
    "timm:resnet18?blend=1&seed=3",
    "timm:resnet18?blend=0",
    "hf:bert-base-uncased",
    "hf:sentence-transformers/all-MiniLM-L6-v2",
    "hf:bert-base-uncased@main?pooling=cls",
    "hf:gpt2?pooling=last",
    "hf:org/name@0123abcd?weights=random&pooling=mean",
    "hf:org/name@refs/pr/1",
    "hf:org/name@v1@x",
    "hf:org/name?blend=0.5&pooling=cls",
    "file:my-bert",
    "file:my-bert?pooling=cls",
    "file:sub/dir/vit.safetensors?arch=vit_small_patch16_224",
    "file:vit.safetensors?arch=vit_small_patch16_224&blend=0.125&seed=2",
    "file:my-bert?revision=v1.2",
    "file:a@b",
    "file:a b/c&d=e.safetensors?arch=resnet18",  # the name precedes the query and is never decoded
    "pkg:efficientnet-lite0",
    "pkg:all-minilm-l6-v2?pooling=mean",
    "pkg:all-minilm-l6-v2?blend=0.5",
    "pkg:efficientnet-lite0?blend=0.75&seed=11",
]


@pytest.mark.parametrize("text", VALID)
def test_every_valid_form_round_trips(text: str) -> None:
    ref = ModelRef.parse(text)
    canonical = ref.canonical()
    assert ModelRef.parse(canonical) == ref
    assert ModelRef.parse(canonical).canonical() == canonical


def test_equivalent_spellings_share_one_canonical_form() -> None:
    a = ModelRef.parse("hf:org/name?revision=main&pooling=cls")
    b = ModelRef.parse("hf:org/name@main?pooling=cls")
    assert a == b and a.canonical() == b.canonical() == "hf:org/name@main?pooling=cls"
    assert ModelRef.parse("timm:resnet18?weights=random&seed=0").canonical() == "timm:resnet18?weights=random"
    assert ModelRef.parse("file:x?arch=resnet%31%38").arch == "resnet18"  # plain escapes still decode
