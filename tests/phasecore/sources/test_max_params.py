"""PHASESCREEN_MAX_PARAMS: a model's size is counted before any weight file is opened or download starts."""

from __future__ import annotations

import builtins
import json
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402

from phasecore.errors import InvalidReference, UnsupportedModel  # noqa: E402
from phasecore.references.refs import ModelRef  # noqa: E402
from phasecore.sources import load_encoder, size  # noqa: E402


def _weights(path: Path) -> int:
    state = timm.create_model("test_vit", num_classes=0).state_dict()
    save_file(state, path)
    return sum(t.numel() for t in state.values())


def forbid_weight_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Fails any read of tensor data: safetensors loads, torch.load, or a read past a header."""
    seen = {"bytes": 0}
    real_open = builtins.open

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were read")

    import phasecore.sources.weights as weights

    monkeypatch.setattr(weights, "load_file", forbidden)
    monkeypatch.setattr(weights, "read_state_dict", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(timm, "create_model", _meta_only(timm.create_model))

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            data = self.f.read(n)
            seen["bytes"] += len(data)
            return data

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def counting_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(self, mode, *args, **kwargs)
        return Counting(f) if "b" in mode and self.suffix == ".safetensors" else f

    monkeypatch.setattr(Path, "open", counting_open)
    return seen


def _meta_only(create: Any) -> Any:
    def create_model(name: str, *args: Any, **kwargs: Any) -> Any:
        assert not kwargs.get("pretrained"), "a download started"
        assert torch.empty(0).device.type == "meta", "a model was built with real memory before the check"
        return create(name, *args, **kwargs)

    return create_model


def test_safetensors_header_counts_without_reading_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = _weights(tmp_path / "vit.safetensors")
    header_bytes = 8 + struct.unpack("<Q", (tmp_path / "vit.safetensors").read_bytes()[:8])[0]
    no_weight_reads = forbid_weight_reads(monkeypatch)
    assert size.safetensors_params(tmp_path / "vit.safetensors") == n
    assert 0 < no_weight_reads["bytes"] <= header_bytes  # the header, never the tensors
    assert (tmp_path / "vit.safetensors").stat().st_size > 10 * header_bytes


def test_a_file_over_the_limit_is_refused_before_its_weights_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = _weights(tmp_path / "vit.safetensors")
    forbid_weight_reads(monkeypatch)
    with pytest.raises(UnsupportedModel, match="PHASESCREEN_MAX_PARAMS") as info:
        load_encoder("file:vit.safetensors?arch=test_vit", model_root=tmp_path, max_params=n - 1)
    assert f"{n:,}" in str(info.value) and str(tmp_path) not in str(info.value)


def test_a_folder_sums_its_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a": torch.zeros(3, 4)}, folder / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(5)}, folder / "model-00002-of-00002.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    forbid_weight_reads(monkeypatch)
    assert size.estimate_params(ModelRef.parse("file:sharded"), model_root=tmp_path) == 17


def test_within_the_limit_loads(tmp_path: Path) -> None:
    n = _weights(tmp_path / "vit.safetensors")
    encoder = load_encoder("file:vit.safetensors?arch=test_vit", model_root=tmp_path, max_params=n)
    assert encoder.identity.n_params <= n


def test_timm_is_counted_on_the_meta_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_weight_reads(monkeypatch)
    n = size.estimate_params(ModelRef.parse("timm:test_vit"), model_root=tmp_path)
    assert n is not None and n > 0
    with pytest.raises(UnsupportedModel):
        load_encoder("timm:test_vit", model_root=tmp_path, max_params=n - 1)  # pretrained: no download tried


def test_timm_meta_count_matches_a_real_build(tmp_path: Path) -> None:
    real = sum(p.numel() for p in timm.create_model("test_vit", num_classes=0).parameters())
    assert size.estimate_params(ModelRef.parse("timm:test_vit"), model_root=tmp_path) == real


def test_hf_is_counted_from_its_config_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    asked: list[tuple[str, str | None]] = []

    def from_pretrained(name: str, revision: str | None = None, **kwargs: Any) -> Any:
        asked.append((name, revision))
        return config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *a, **k: pytest.fail("weights fetched"))
    real = sum(p.numel() for p in transformers.AutoModel.from_config(config).parameters())
    n = size.estimate_params(ModelRef.parse("hf:org/tiny@v1"), model_root=tmp_path)
    assert n == real and asked == [("org/tiny", "v1")]
    with pytest.raises(UnsupportedModel):
        load_encoder("hf:org/tiny@v1", model_root=tmp_path, max_params=real - 1)


def test_hf_without_a_reachable_config_is_unknown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    assert size.estimate_params(ModelRef.parse("hf:org/tiny"), model_root=tmp_path) is None


def test_packages_have_known_sizes(tmp_path: Path) -> None:
    assert size.estimate_params(ModelRef.parse("pkg:all-minilm-l6-v2"), model_root=tmp_path) == 22_713_216
    lite0 = size.estimate_params(ModelRef.parse("pkg:efficientnet-lite0"), model_root=tmp_path)
    assert lite0 is not None and 3_000_000 < lite0 < 5_000_000


def test_a_bad_header_is_an_invalid_reference(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(InvalidReference):
        size.safetensors_params(tmp_path / "bad.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(InvalidReference):
        size.safetensors_params(tmp_path / "huge.safetensors")


def test_a_broken_reference_is_left_to_the_loader_to_explain(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    assert size.estimate_params(ModelRef.parse("file:bad.safetensors?arch=test_vit"), model_root=tmp_path) is None
    assert size.estimate_params(ModelRef.parse("file:x.pth?arch=no_such_arch"), model_root=tmp_path) is None
