"""Distinct inputs (METRICS §0): identical inputs have identical gradients, so kernels are computed over the
U distinct inputs of a modality and expanded to the N samples.

Identity is exact: the same pixels (a tensor row, byte for byte) or the same token ids and mask (every tensor
of a mapping input, row by row). Digits' 576 captions hold about 100 distinct ones, so the text kernel costs
about (100/576)² of the full one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from phasecore.sources.base import Inputs, batch_size, slice_inputs


@dataclass(frozen=True)
class Distinct:
    """The U distinct rows of a batch of N: ``inputs`` (U rows, first occurrences in order), ``inverse``
    (N,) int with ``rows[i] == inputs[inverse[i]]``, ``counts`` (U,) int the multiplicities n_u."""

    inputs: Inputs
    inverse: np.ndarray
    counts: np.ndarray

    @property
    def n(self) -> int:
        return int(self.inverse.size)

    @property
    def u(self) -> int:
        return int(self.counts.size)

    def expand_gram(self, gram_u: np.ndarray) -> np.ndarray:
        """(U, U) → (N, N): ``K[i, j] = K_U[inverse[i], inverse[j]]``."""
        gram: np.ndarray = gram_u[np.ix_(self.inverse, self.inverse)]
        return gram

    def expand_rows(self, rows_u: np.ndarray) -> np.ndarray:
        """(U, ...) → (N, ...)."""
        rows: np.ndarray = rows_u[self.inverse]
        return rows


def distinct_inputs(inputs: Inputs) -> Distinct:
    """Collapse identical rows of ``inputs`` (a batch-first tensor or a mapping of them)."""
    n = batch_size(inputs)
    tensors = [inputs[k] for k in sorted(inputs)] if isinstance(inputs, Mapping) else [inputs]
    flat = [t.detach().cpu().contiguous().reshape(n, -1) for t in tensors]
    first: dict[bytes, int] = {}
    inverse = np.empty(n, dtype=np.int64)
    order: list[int] = []
    for i in range(n):
        digest = hashlib.blake2b(digest_size=16)
        for t in flat:
            digest.update(t[i].numpy().tobytes())
        key = digest.digest()
        if key not in first:
            first[key] = len(order)
            order.append(i)
        inverse[i] = first[key]
    counts = np.bincount(inverse, minlength=len(order))
    index = torch.as_tensor(order, dtype=torch.long, device=tensors[0].device)  # follows the inputs
    return Distinct(inputs=slice_inputs(inputs, index), inverse=inverse, counts=counts)
