"""The premise check of the ``shapes`` ground truth (issue 10): can METRICS §7's held-out-value test tell a pair
that carries meaning from one that does not, and do the offline models carry it?

    python bench/shapes_premise.py [--dataset 'shapes?colors=10&shapes=8'] [--n 960] [--seed 0]
        [--vision pkg:efficientnet-lite0 ...] [--language pkg:all-minilm-l6-v2 ...] [--random-seeds 4]
        [--draws 12] [--markdown]

Embeds the dataset once per encoder (forward passes only: no kernel, a few minutes on a 2-core CPU) and runs
``phasecore.groundtruth.mapfit.measure_alignment`` with the dataset's held-out groups for every vision × text pair,
among them these controls, whose answers are known:

- ``oracle`` (either side): features that carry the meaning of the attributes linearly, the RGB of the colour
  and two numbers for the shape (vertex count, roundness), through a random projection plus noise. An oracle
  vision × oracle text pair is what "aligned" means here; if it is not decided aligned the test has no power.
- ``pkg:all-minilm-l6-v2?blend=1&seed=k``: random-init MiniLMs (the vocabulary and architecture, no meaning).
- ``bag-of-words``: each caption a sum of random per-word vectors (``--draws`` vocabularies), the
  "consistent bag of word vectors" of the issue: it must sit at chance on held-out values.

Prints one row per pair: alignment_score, outcome, p_above, p_below, seen accuracy and the group scores s_g.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phasecore.data import load_dataset  # noqa: E402
from phasecore.data.base import PairedDataset  # noqa: E402
from phasecore.data.shapes import COLORS  # noqa: E402
from phasecore.groundtruth.mapfit import measure_alignment
from phasecore.screening.profile import class_prototypes  # noqa: E402
from phasecore.sources import load_encoder  # noqa: E402
from phasecore.sources.base import call_encoder  # noqa: E402

#: the shape's meaning as two numbers: vertices (12 for the cross's corners, 10 for the star's) and roundness
SHAPE_MEANING = {
    "circle": (0.0, 1.0),
    "square": (4.0, 0.0),
    "triangle": (3.0, 0.0),
    "star": (10.0, 0.2),
    "hexagon": (6.0, 0.6),
    "cross": (12.0, 0.1),
    "diamond": (4.0, 0.2),
    "pentagon": (5.0, 0.4),
}


def attribute_meaning(class_names: list[str]) -> np.ndarray:
    """(C, 5): RGB in [0, 1] and (vertices / 12, roundness) of each class ``"<colour> <shape>"``."""
    rows = []
    for name in class_names:
        color, shape = name.split(" ", 1)
        vertices, round_ = SHAPE_MEANING[shape]
        rows.append([*(np.array(COLORS[color]) / 255.0), vertices / 12.0, round_])
    return np.array(rows)


def embed(ref: str, data: PairedDataset) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, d) embeddings of the dataset's images or captions, and the class prototypes for a text encoder."""
    encoder = load_encoder(ref)
    items = data.images if encoder.modality == "vision" else data.captions
    rows = []
    with torch.no_grad():
        for start in range(0, len(items), 32):
            rows.append(call_encoder(encoder, encoder.preprocess(items[start : start + 32])).double().numpy())
    prototypes = class_prototypes(encoder, data) if encoder.modality == "language" else None
    return np.concatenate(rows), prototypes


def oracle(meaning: np.ndarray, labels: np.ndarray, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per-sample features and class prototypes that carry ``meaning`` linearly (random projection, noise)."""
    projection = rng.normal(size=(meaning.shape[1], dim))
    prototypes = meaning @ projection
    samples = prototypes[labels] + 0.3 * rng.normal(size=(labels.size, dim))
    return samples, prototypes


def bag_of_words(data: PairedDataset, rng: np.random.Generator, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Captions and class prototypes as sums of random per-word vectors (one vocabulary per call)."""
    vocab: dict[str, np.ndarray] = {}

    def vec(text: str) -> np.ndarray:
        words = re.findall(r"[a-z-]+", text.lower())
        for w in words:
            if w not in vocab:
                vocab[w] = rng.normal(size=dim)
        return np.sum([vocab[w] for w in words], axis=0)

    samples = np.stack([vec(c) for c in data.captions])
    prototypes = []
    for c in range(len(data.class_names)):
        rows = np.stack([vec(t) for t in data.class_captions[c]])
        prototypes.append((rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(0))
    return samples, np.stack(prototypes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="shapes?colors=10&shapes=8")
    parser.add_argument("--n", type=int, default=960)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision", nargs="*", default=["pkg:efficientnet-lite0"])
    parser.add_argument("--language", nargs="*", default=["pkg:all-minilm-l6-v2"])
    parser.add_argument("--random-seeds", type=int, default=4, help="random-init MiniLMs (blend=1) to add")
    parser.add_argument("--draws", type=int, default=12, help="bag-of-words vocabularies to add")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    started = time.time()
    data = load_dataset(args.dataset, n=args.n, seed=args.seed)
    labels = np.array(data.labels)
    groups = data.outcome_groups
    meaning = attribute_meaning(data.class_names)
    rng = np.random.default_rng([args.seed, 2024])
    print(f"# {data.name}, N = {data.n}, seed {args.seed}, G = {len(groups or [])} held-out groups", flush=True)

    vision: dict[str, np.ndarray] = {}
    for ref in args.vision:
        vision[ref] = embed(ref, data)[0]
        print(f"# embedded {ref} ({time.time() - started:.0f} s)", flush=True)
    vision["oracle"] = oracle(meaning, labels, 256, rng)[0]
    language: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    refs = list(args.language) + [f"pkg:all-minilm-l6-v2?blend=1&seed={k}" for k in range(args.random_seeds)]
    for ref in refs:
        samples, prototypes = embed(ref, data)
        assert prototypes is not None, f"{ref} is not a text encoder"
        language[ref] = (samples, prototypes)
        print(f"# embedded {ref} ({time.time() - started:.0f} s)", flush=True)
    language["oracle"] = oracle(meaning, labels, 384, rng)
    for k in range(args.draws):
        language[f"bag-of-words #{k}"] = bag_of_words(data, np.random.default_rng([args.seed, 99, k]))

    print("| vision | text | alignment_score | outcome | p_above | p_below | seen acc. | s_g |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    for v_name, E_v in vision.items():
        for l_name, (E_l, T) in language.items():
            r = measure_alignment(E_v, E_l, labels, T, captions=data.captions, seed=args.seed, held_out_groups=groups)
            scores = " ".join(f"{g['s_g']:+.2f}" for g in r["group_scores"])
            print(
                f"| {v_name} | {l_name} | {r['alignment_score']:+.3f} | {r['outcome']} | {r['p_above']:.3f} "
                f"| {r['p_below']:.3f} | {r['seen_accuracy']:.2f} | {scores} |",
                flush=True,
            )
    print(f"# {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
