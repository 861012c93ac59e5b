"""``digits``: scikit-learn's 1797 handwritten 8 × 8 digits, bundled with scikit-learn (no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from phasecore.data.base import PairedDataset
from phasecore.data.captions import DIGIT_WORDS, handwritten_digit_captions
from phasecore.data.sampling import sample_pairs


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
