"""What the engine's passes need from the device: exact float32 arithmetic, eager attention, and memory.

- ``exact_numerics``: no TF32 and no reduced-precision reductions in matmuls and convolutions, and
  deterministic algorithms where torch has them, for the duration of the engine's passes; the caller's
  settings are restored afterwards, also on error. On a CPU these change nothing that matters; on an
  Ampere-or-later GPU, TF32 would round matmul inputs to 10 mantissa bits (relative error ~1e-3), far
  above what the rule checks and Gram validity tolerate.
- ``eager_attention``: a transformers model built with SDPA (transformers' default) runs its attention
  as one fused op, which the engine's hooks and rules cannot see into, so whole layers fall back to the
  per-sample loop; the engine switches every transformers (sub)model to ``eager`` for its passes and back.
- Out of memory: ``is_out_of_memory``, ``free_bytes`` and ``memory_budget`` (a GPU's budget is capped by
  its free memory).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_NEW_API = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")
_REDUCED = (
    "allow_fp16_reduced_precision_reduction",
    "allow_bf16_reduced_precision_reduction",
    "allow_fp16_accumulation",
)


def _backend(path: str) -> Any:
    obj: Any = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _new_api() -> bool:
    """torch ≥ 2.9 keeps float32 precision per backend (``fp32_precision``); mixing it with the legacy flags
    (``allow_tf32``, ``set_float32_matmul_precision``) in one process makes the legacy getters raise."""
    return isinstance(getattr(torch.backends.cuda.matmul, "fp32_precision", None), str)


@contextlib.contextmanager
def exact_numerics() -> Iterator[None]:
    """Full float32 precision and deterministic algorithms inside; the caller's settings restored after.

    Sets: TF32 off for CUDA matmuls and cuDNN convolutions/RNNs (and oneDNN's reduced modes on a CPU),
    i.e. ``torch.backends.cuda.matmul.allow_tf32 = False``, ``torch.backends.cudnn.allow_tf32 = False`` and
    ``torch.set_float32_matmul_precision("highest")``, through the per-backend ``fp32_precision = "ieee"``
    where torch has that API (the legacy flags are views of it); no fp16/bf16 reduced-precision
    reductions or fp16 accumulation; ``torch.use_deterministic_algorithms(True, warn_only=True)`` (ops without
    a deterministic version warn rather than fail; uninitialised memory is not filled), and cuDNN
    deterministic, not benchmarking. On CUDA, cuBLAS is deterministic only with ``CUBLAS_WORKSPACE_CONFIG``
    set before the process first uses it (``bench/gpu.sh`` sets ``:4096:8``).
    """
    matmul = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    saved_new: dict[str, str] = {}
    if _new_api():
        saved_new = {path: _backend(path).fp32_precision for path in _NEW_API if _backend(path) is not None}
    saved_legacy: dict[str, Any] = {}
    if not saved_new:
        saved_legacy = {
            "matmul_tf32": matmul.allow_tf32,
            "cudnn_tf32": cudnn.allow_tf32,
            "precision": torch.get_float32_matmul_precision(),
        }
    saved_reduced = {name: getattr(matmul, name) for name in _REDUCED if hasattr(matmul, name)}
    saved_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    saved_cudnn = (cudnn.deterministic, cudnn.benchmark)
    fill = getattr(torch.utils, "deterministic", None)
    saved_fill = getattr(fill, "fill_uninitialized_memory", None)
    try:
        if saved_new:
            for path in saved_new:
                _backend(path).fp32_precision = "ieee"
        else:
            torch.set_float32_matmul_precision("highest")
            matmul.allow_tf32 = False
            cudnn.allow_tf32 = False
        for name in saved_reduced:
            setattr(matmul, name, False)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if fill is not None and saved_fill is not None:
            fill.fill_uninitialized_memory = False  # deterministic choice of algorithms, not NaN-filled buffers
        cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved_cudnn
        torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
        if fill is not None and saved_fill is not None:
            fill.fill_uninitialized_memory = saved_fill
        for name, value in saved_reduced.items():
            setattr(matmul, name, value)
        for path, value in saved_new.items():
            _backend(path).fp32_precision = value
        if saved_legacy:
            torch.set_float32_matmul_precision(saved_legacy["precision"])
            matmul.allow_tf32 = saved_legacy["matmul_tf32"]
            cudnn.allow_tf32 = saved_legacy["cudnn_tf32"]


def _transformers_roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost transformers models inside ``model`` (``set_attn_implementation`` recurses itself)."""
    roots: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            continue
        if not callable(getattr(module, "set_attn_implementation", None)) and not hasattr(module, "_supports_sdpa"):
            continue
        if any(name == r or name.startswith(f"{r}.") or r == "" for r, _ in roots):
            continue
        roots.append((name, module))
    return roots


def _set_attention(module: nn.Module, implementation: str) -> None:
    setter = getattr(module, "set_attn_implementation", None)
    if callable(setter):
        setter(implementation)
        return
    # older transformers: the attention classes read the config at forward time in most models
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = implementation


@contextlib.contextmanager
def eager_attention(model: nn.Module, record: dict[str, Any] | None = None) -> Iterator[None]:
    """Every transformers model inside ``model`` runs eager attention inside; its own implementation after.

    ``record`` (optional) receives ``{"attention": {name: previous implementation}}`` for the models switched.
    """
    switched: list[tuple[nn.Module, str]] = []
    seen: dict[str, str] = {}
    try:
        for name, module in _transformers_roots(model):
            previous = getattr(module.config, "_attn_implementation", None)
            if not isinstance(previous, str) or previous == "eager":
                continue
            _set_attention(module, "eager")
            switched.append((module, previous))
            seen[name or "model"] = previous
        if record is not None and seen:
            record["attention"] = seen
        yield
    finally:
        for module, previous in reversed(switched):
            try:
                _set_attention(module, previous)
            except Exception:  # an implementation that cannot be re-checked now: put the config back as it was
                for sub in module.modules():
                    config = getattr(sub, "config", None)
                    if config is not None and hasattr(config, "_attn_implementation"):
                        config._attn_implementation = previous


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU's out-of-memory error (``torch.cuda.OutOfMemoryError``, or a RuntimeError saying so), or the host's."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_bytes(device: torch.device) -> tuple[int, int] | None:
    """(free, total) bytes of ``device``: a GPU's from ``torch.cuda.mem_get_info``, the host's from /proc/meminfo."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def memory_budget(device: torch.device, requested_gb: float) -> tuple[float, dict[str, Any]]:
    """The budget the engine uses: ``requested_gb``, capped on a GPU by the memory it has free now."""
    if device.type != "cuda":
        return requested_gb, {"memory_budget_gb": requested_gb}
    free, total = free_bytes(device) or (0, 0)
    capped = min(requested_gb, free / 2**30)
    return capped, {
        "memory_budget_gb": round(capped, 3),
        "memory_budget_requested_gb": requested_gb,
        "device_free_gb": round(free / 2**30, 3),
        "device_total_gb": round(total / 2**30, 3),
    }


_TRIED = re.compile(r"tried to allocate ([\d.]+) ?([kmgt]i?b)", re.IGNORECASE)
_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def needed_bytes(exc: BaseException, device: torch.device) -> int:
    """About what the failed step needed: what was allocated on the device when it failed (call this while
    the exception, and so the step's tensors, are still alive) plus the allocation that failed (read off
    torch's message, where it gives one)."""
    tried = 0
    match = _TRIED.search(str(exc))
    if match:
        tried = int(float(match.group(1)) * _UNITS[match.group(2)[0].lower()])
    in_use = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return in_use + tried


def release(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a retry starts from what is really in use."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
