"""The balanced, seeded sample of N pairs shared by both encoders (METRICS §0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from phasecore.data.base import PairedDataset, PairedSample
from phasecore.errors import InvalidSettings

DEFAULT_N = 576


def balanced_indices(
    labels: np.ndarray, n: int, rng: np.random.Generator, *, class_names: list[str], dataset: str
) -> np.ndarray:
    """``n`` distinct indices into ``labels (M,)``: ``n // C`` per class, ``+1`` for ``n % C`` classes drawn
    by ``rng``; returned in a shuffled order (so batches mix classes).
    """
    n_classes = len(class_names)
    if n < 1:
        raise InvalidSettings(f"N={n} pairs requested; N must be at least 1")
    if n > len(labels):
        raise InvalidSettings(f"N={n} pairs requested but {dataset} holds only {len(labels)}; lower N")
    base, remainder = divmod(n, n_classes)
    quota = np.full(n_classes, base)
    quota[rng.choice(n_classes, remainder, replace=False)] += 1
    pools = [np.flatnonzero(labels == c) for c in range(n_classes)]
    short = [c for c in range(n_classes) if len(pools[c]) < quota[c]]
    if short:
        smallest = min(len(p) for p in pools)
        raise InvalidSettings(
            f"N={n} pairs need {base}-{base + 1} per class but class {class_names[short[0]]!r} of {dataset} "
            f"has only {len(pools[short[0]])}; N ≤ {smallest * n_classes} keeps every class equal"
        )
    chosen = np.concatenate(
        [rng.choice(pool, q, replace=False) for pool, q in zip(pools, quota, strict=True)]
    )
    return rng.permutation(chosen)


def sample_pairs(
    name: str,
    *,
    labels: np.ndarray,
    class_names: list[str],
    class_captions: dict[int, list[str]],
    image_at: Callable[[int], np.ndarray],
    n: int,
    seed: int,
    id_prefix: str,
    caption_at: Callable[[int], str] | None = None,
    extra: dict[str, Any] | None = None,
) -> PairedDataset:
    """A balanced sample of ``n`` pairs from a pool of ``labels (M,)``.

    ``image_at(i)`` gives image ``i`` as ``(H, W, 3) float32 in [0, 1]`` (only the chosen ones are read).
    ``caption_at(i)`` gives a stored caption; without it each sample draws one of its class's templates
    with the same ``numpy.random.default_rng(seed)`` that drew the sample. Sample ids are ``<id_prefix>:<i>``.
    """
    rng = np.random.default_rng(seed)
    indices = balanced_indices(labels, n, rng, class_names=class_names, dataset=name)
    if caption_at is None:
        templates = [class_captions[int(labels[i])] for i in indices]
        draws = rng.integers(0, [len(t) for t in templates])
        captions = [t[d] for t, d in zip(templates, draws, strict=True)]
    else:
        captions = [caption_at(int(i)) for i in indices]
    samples = [
        PairedSample(
            sample_id=f"{id_prefix}:{i}", image=image_at(int(i)), caption=caption, label=int(labels[i])
        )
        for i, caption in zip(indices, captions, strict=True)
    ]
    return PairedDataset(
        name=name,
        samples=samples,
        class_names=class_names,
        class_captions=class_captions,
        seed=seed,
        extra={"n_available": len(labels)} | (extra or {}),
    )
