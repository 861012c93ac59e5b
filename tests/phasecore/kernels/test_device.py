"""The engine on a GPU, checked on a CPU: exact numerics, tensors on the model's device, out of memory, attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from phasecore.errors import DeviceOutOfMemory
from phasecore.kernels import device as devmod
from phasecore.kernels import probe_gram
from phasecore.kernels.device import eager_attention, exact_numerics, memory_budget
from phasecore.kernels.stability import stability_probe

matmul = torch.backends.cuda.matmul
cudnn = torch.backends.cudnn


@pytest.fixture
def restore_numerics():
    """Whatever a test sets, the process's numerics settings are as before afterwards."""
    with exact_numerics():  # its own restore is what is tested below; this only snapshots for safety
        pass
    saved_new = {p: devmod._backend(p).fp32_precision for p in devmod._NEW_API} if devmod._new_api() else {}
    saved = {n: getattr(matmul, n) for n in devmod._REDUCED if hasattr(matmul, n)}
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cud = (cudnn.deterministic, cudnn.benchmark)
    yield
    for p, v in saved_new.items():
        devmod._backend(p).fp32_precision = v
    for n, v in saved.items():
        setattr(matmul, n, v)
    torch.use_deterministic_algorithms(det[0], warn_only=det[1])
    cudnn.deterministic, cudnn.benchmark = cud


def _state() -> dict:
    return {
        "matmul_tf32": matmul.allow_tf32,
        "cudnn_tf32": cudnn.allow_tf32,
        "precision": torch.get_float32_matmul_precision(),
        "fp16_reduction": matmul.allow_fp16_reduced_precision_reduction,
        "bf16_reduction": matmul.allow_bf16_reduced_precision_reduction,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": cudnn.deterministic,
        "cudnn_benchmark": cudnn.benchmark,
    }


def _exact_inside() -> bool:
    if devmod._new_api():
        precise = all(devmod._backend(p).fp32_precision == "ieee" for p in ("cuda.matmul", "cudnn.conv"))
    else:
        precise = not matmul.allow_tf32 and not cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    return (
        precise
        and not matmul.allow_fp16_reduced_precision_reduction
        and not matmul.allow_bf16_reduced_precision_reduction
        and torch.are_deterministic_algorithms_enabled()
        and cudnn.deterministic
        and not cudnn.benchmark
    )


def test_exact_numerics_sets_and_restores_even_on_error(restore_numerics):
    torch.set_float32_matmul_precision("high")
    matmul.allow_tf32 = True
    cudnn.allow_tf32 = True
    matmul.allow_fp16_reduced_precision_reduction = True
    matmul.allow_bf16_reduced_precision_reduction = True
    torch.use_deterministic_algorithms(False)
    cudnn.benchmark = True
    before = _state()
    assert before["matmul_tf32"] and before["precision"] == "high"
    with pytest.raises(ValueError, match="inside"), exact_numerics():
        assert _exact_inside()
        raise ValueError("inside")
    assert _state() == before


def test_probe_gram_and_stability_run_with_exact_numerics_and_restore(restore_numerics):
    matmul.allow_tf32 = True
    torch.use_deterministic_algorithms(False)
    before = _state()
    seen: list[bool] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(_exact_inside())
            return self.lin(x)

    torch.manual_seed(0)
    model, x = Spy(), torch.randn(6, 5)
    probe_gram(model, x, probes=2)
    assert seen and all(seen)
    seen.clear()
    stability_probe(model, x, probes=2, subset=4, steps=2)
    assert seen and all(seen)
    assert _state() == before


class _Pooled(nn.Module):
    """Masked mean of a transformers encoder, every tensor on the inputs' device (as TextEncoder does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)


def _tiny_bert(attn: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    kw = {} if attn is None else {"attn_implementation": attn}
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, **kw
    )
    return _Pooled(transformers.BertModel(cfg)).eval()


def _text(n: int = 5, t: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (n, t), generator=gen)
    mask = (torch.arange(t) < torch.tensor([6, 4, 5, 2, 6][:n])[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


@pytest.mark.parametrize("method", ["exact", "sketch"])
@pytest.mark.parametrize("gradients", ["rules", "loop"])
def test_every_tensor_follows_the_model_device(method, gradients):
    """Under ``torch.device("meta")`` every tensor created without an explicit device lands on ``meta``,
    where it can neither meet the model's CPU tensors nor be read back: the engine only runs, and gives the
    same Gram, if everything it creates names its device (the model's, or the host on purpose)."""
    cases = [(_conv(), torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))), (_tiny_bert(), _text())]
    kw = dict(probes=2, method=method, sketch_dim=64, cross_probe=True, chunk_size=4, gradients=gradients)
    for model, x in cases:
        expected = probe_gram(model, x, **kw)
        with torch.device("meta"):
            got = probe_gram(model, x, **kw)
        np.testing.assert_allclose(got.gram, expected.gram, rtol=1e-10, atol=0)


def test_stability_and_agop_follow_the_model_device():
    """The same check for the stability probe's training steps and the input-space AGOP."""
    from phasecore.kernels.agop import agop_spectrum

    model, x = _tiny_bert(), _text()
    kw = dict(probes=2, subset=4, steps=2, chunk_size=4)
    expected = stability_probe(model, x, **kw).s_ntk
    spaces = ("parameters", "inputs")
    agop = {space: agop_spectrum(model, x, probes=2, k=2, space=space).eigenvalues for space in spaces}
    with torch.device("meta"):
        assert stability_probe(model, x, **kw).s_ntk == expected
        for space, eigenvalues in agop.items():
            np.testing.assert_allclose(agop_spectrum(model, x, probes=2, k=2, space=space).eigenvalues, eigenvalues)


def _oom_above(model: nn.Module, rows: int, error: Exception) -> None:
    """The model's forward raises ``error`` on batches of more than ``rows`` samples."""
    forward = model.forward

    def limited(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > rows:
            raise error
        return forward(x)

    model.forward = limited  # type: ignore[method-assign]


def test_out_of_memory_retries_once_at_half_the_chunk():
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = probe_gram(_conv(), x, probes=2, chunk_size=8, gradients="rules")
    model = _conv()
    _oom_above(model, 4, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB"))
    got = probe_gram(model, x, probes=2, chunk_size=8, gradients="rules")
    assert got.info["out_of_memory_retry"] == {"chunk_size": 8, "retried_at": 4}
    assert got.info["chunk_size"] == 4
    np.testing.assert_allclose(got.gram, expected.gram, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in model.parameters())  # the caller's flags, restored


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_out_of_memory_twice_is_a_clear_error(error):
    model = _conv()
    _oom_above(model, 1, error)
    with pytest.raises(DeviceOutOfMemory) as info:
        probe_gram(model, torch.randn(12, 3, 8, 8), probes=2, chunk_size=8, gradients="rules")
    message = str(info.value)
    assert "at a chunk of 8 samples and again at 4" in message
    assert "needs about 2.0 GiB, the device has" in message and "GiB free" in message
    assert isinstance(info.value, MemoryError) and info.value.kind == "out-of-memory"


def test_other_errors_are_not_retried():
    model = _conv()
    _oom_above(model, 1, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        probe_gram(model, torch.randn(12, 3, 8, 8), probes=2, chunk_size=8, gradients="rules")


def test_gpu_memory_budget_is_capped_by_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    budget, info = memory_budget(torch.device("cuda", 0), 16.0)
    assert budget == pytest.approx(3.0)
    assert info == {
        "memory_budget_gb": 3.0,
        "memory_budget_requested_gb": 16.0,
        "device_free_gb": 3.0,
        "device_total_gb": 80.0,
    }
    assert memory_budget(torch.device("cuda", 0), 2.0)[0] == 2.0
    assert memory_budget(torch.device("cpu"), 16.0) == (16.0, {"memory_budget_gb": 16.0})


def test_sdpa_models_run_as_built_on_a_cpu_and_match_eager():
    model, x = _tiny_bert(), _text()
    seen: list[str] = []
    model.model.encoder.layer[0].attention.register_forward_pre_hook(
        lambda *_: seen.append(model.model.config._attn_implementation)
    )
    got = probe_gram(model, x, probes=2, cross_probe=True)
    assert set(seen) == {"sdpa"} and "attention" not in got.info
    assert got.info["per_sample_loop_params"] == []  # SDPA has no parameters: every rule checked exact
    eager = probe_gram(_tiny_bert("eager"), x, probes=2, cross_probe=True)
    np.testing.assert_allclose(got.gram, eager.gram, rtol=1e-5, atol=1e-9)


def test_sdpa_models_run_eager_inside_the_engine_where_asked_and_are_restored(monkeypatch):
    monkeypatch.setattr("phasecore.kernels.engine.EAGER_ATTENTION_ON", frozenset({"cuda", "cpu"}))
    model, x = _tiny_bert(), _text()
    assert model.model.config._attn_implementation == "sdpa"
    seen: list[str] = []
    model.model.encoder.layer[0].attention.register_forward_pre_hook(
        lambda *_: seen.append(model.model.config._attn_implementation)
    )
    got = probe_gram(model, x, probes=2, cross_probe=True)
    assert set(seen) == {"eager"}
    assert model.model.config._attn_implementation == "sdpa"
    assert got.info["attention"] == {"model": "sdpa"}
    assert got.info["per_sample_loop_params"] == []
    eager = probe_gram(_tiny_bert("eager"), x, probes=2, cross_probe=True)
    assert "attention" not in eager.info
    np.testing.assert_allclose(got.gram, eager.gram, rtol=1e-5, atol=1e-9)


def test_eager_attention_restores_on_error():
    model = _tiny_bert()
    with pytest.raises(KeyError), eager_attention(model):
        assert model.model.config._attn_implementation == "eager"
        raise KeyError("x")
    assert model.model.config._attn_implementation == "sdpa"
