"""``digits``: scikit-learn's 1797 handwritten 8 × 8 digits, bundled with scikit-learn (no download)."""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits

from phasecore.data.base import PairedDataset
from phasecore.data.captions import DIGIT_WORDS, handwritten_digit_captions
from phasecore.data.sampling import balanced_indices, sample_pairs


@functools.cache
def _digit_labels() -> np.ndarray:
    """The 1797 labels (read-only): the bundled file never changes, and parsing it costs milliseconds."""
    labels: np.ndarray = load_digits().target.astype(np.int64)
    labels.flags.writeable = False
    return labels


def digits_sample_labels(*, n: int, seed: int) -> np.ndarray:
    """The labels ``(n,)`` of ``load_digits_pairs(n=n, seed=seed)``, no image copied (the API's request check);
    the same errors for an N the classes cannot carry."""
    labels = _digit_labels()
    rng = np.random.default_rng(seed)  # the first draws of sample_pairs' generator: the same indices
    sample: np.ndarray = labels[balanced_indices(labels, n, rng, class_names=list(DIGIT_WORDS), dataset="digits")]
    return sample


def load_digits_pairs(*, n: int, seed: int) -> PairedDataset:
    """Images ``(8, 8, 3) float32 in [0, 1]`` (ink bright on dark, grey replicated to RGB; the vision
    encoder's preprocess upsamples them), captions from ten templates per digit. Ids ``digits:<index>``.
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel values are ink counts 0..16
    return sample_pairs(
        "digits",
        labels=digits.target.astype(np.int64),
        class_names=list(DIGIT_WORDS),
        class_captions={d: handwritten_digit_captions(d) for d in range(10)},
        image_at=lambda i: np.repeat(images[i][:, :, None], 3, axis=2),
        n=n,
        seed=seed,
        id_prefix="digits",
    )
