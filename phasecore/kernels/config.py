"""The kernel options, one frozen value: what ``probe_gram``, ``ntk_gram``, ``stability_probe`` and
``agop_spectrum`` share (METRICS §1). Each function takes a ``KernelConfig`` and, for convenience, the same
options as keywords (``ntk_gram(model, x, probes=4, method="exact")``), which replace the config's fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

ProgressFn = Callable[[str, float], None]
#: M Gaussian probes drawn from the seed, "exact" for the d basis outputs, or an explicit (M, d) tensor
Probes = int | Literal["exact"] | torch.Tensor
Method = Literal["exact", "sketch", "auto"]
Gradients = Literal["auto", "rules", "loop"]


@dataclass(frozen=True, eq=False)
class KernelConfig:
    """How a probe Gram is computed.

    probes: M Gaussian probes ``u_m ~ N(0, I_d)`` drawn from ``seed``, ``"exact"`` for the d basis outputs, or
        an explicit ``(M, d)`` tensor.
    method: ``exact`` (per-layer exact products), ``sketch`` (CountSketch of width ``sketch_dim``), or ``auto``
        (exact when its stored representations fit ``memory_budget_gb``, else sketch).
    seed: of the probes and the sketch's hashes.
    chunk_size: samples per pass (the engine may fit a smaller one to the memory budget).
    params: names of the parameters in θ (None: all).
    memory_budget_gb: the most the exact products may keep (capped by a GPU's free memory).
    gradients: how per-sample gradients are formed after the checked first chunk (``probe_gram`` says how).
    """

    probes: Probes = 4
    method: Method = "exact"
    sketch_dim: int = 8192
    seed: int = 0
    chunk_size: int = 32
    params: frozenset[str] | None = None
    memory_budget_gb: float = 4.0
    gradients: Gradients = "auto"

    def __post_init__(self) -> None:
        if self.params is not None and not isinstance(self.params, frozenset):
            object.__setattr__(self, "params", frozenset(self.params))

    @classmethod
    def build(cls, config: KernelConfig | None = None, options: Mapping[str, Any] | None = None) -> KernelConfig:
        """``config`` (default: all defaults) with ``options`` replacing its fields; an unknown option is a
        TypeError naming it, as an unknown keyword argument would be."""
        options = dict(options or {})
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown kernel option(s) {', '.join(unknown)}")
        base = config if config is not None else cls()
        return replace(base, **options) if options else base

    def with_params(self, params: Iterable[str] | None) -> KernelConfig:
        return replace(self, params=None if params is None else frozenset(params))
