"""Paired data: a dataset reference in, a balanced seeded sample of N (image, caption, label) pairs out.

References: ``digits``; ``shapes[?colors=K&shapes=S&size=PX&caption_noise=P]`` (rendered from the seed, see
``phasecore.data.shapes``); ``cifar10``, ``cifar100``, ``svhn`` (test split; ``:train`` for the training
split) from the data root; ``manifest:<file.jsonl>`` under the data root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phasecore.data.base import PairedDataset, PairedSample
from phasecore.data.digits import digits_sample_labels, load_digits_pairs
from phasecore.data.manifest import load_manifest_pairs
from phasecore.data.sampling import DEFAULT_N
from phasecore.data.shapes import load_shapes_pairs, shapes_sample_labels
from phasecore.data.torchvision_sets import SETS, SPLITS, files_present, load_torchvision_pairs, sample_set_labels
from phasecore.errors import InvalidReference
from phasecore.paths import default_data_root

__all__ = ["DEFAULT_N", "PairedDataset", "PairedSample", "list_datasets", "load_dataset", "sample_labels"]


def load_dataset(
    ref: str,
    *,
    n: int = DEFAULT_N,
    seed: int = 0,
    data_root: str | Path | None = None,
    allow_download: bool = False,
) -> PairedDataset:
    """Load ``n`` pairs of dataset ``ref``, balanced over classes (± 1) and drawn by
    ``numpy.random.default_rng(seed)``; the same ``(ref, n, seed)`` gives the same pairs in the same order.

    ``data_root`` defaults to ``$PHASESCREEN_DATA_ROOT`` or ``~/.cache/phasescreen/data``; torchvision
    datasets are downloaded into it only when ``allow_download``. Raises InvalidSettings when ``n`` exceeds
    what the dataset can give balanced, AssetUnavailable when files are missing.
    """
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    kind, _, rest = ref.strip().partition(":")
    rendered = _rendered(ref)
    if rendered is not None:
        name, query = rendered
        return load_digits_pairs(n=n, seed=seed) if name == "digits" else load_shapes_pairs(query, n=n, seed=seed)
    if kind in SETS:
        return load_torchvision_pairs(
            ref.strip(), n=n, seed=seed, data_root=root, allow_download=allow_download
        )
    if kind == "manifest" and rest:
        return load_manifest_pairs(rest, n=n, seed=seed, data_root=root)
    raise InvalidReference(
        f"dataset {ref!r} is not one of digits, shapes[?colors=8&shapes=6&size=224&caption_noise=0], "
        f"{', '.join(f'{s}[:train]' for s in SETS)}, "
        "manifest:<file.jsonl>"
    )


def sample_labels(
    ref: str, *, n: int = DEFAULT_N, seed: int = 0, data_root: str | Path | None = None
) -> np.ndarray:
    """The labels ``(n,)`` of ``load_dataset(ref, n=n, seed=seed, data_root=data_root)``, in its order, with
    the same errors. ``digits`` and ``shapes`` draw only the labels (no image is copied or rendered: the API
    checks every request this way); the torchvision sets read only their label files, without torchvision (the
    API process imports no torch); manifests are loaded as they would be (a manifest's chosen images must be
    readable). Nothing is downloaded.
    """
    rendered = _rendered(ref)
    if rendered is not None:
        name, query = rendered
        return digits_sample_labels(n=n, seed=seed) if name == "digits" else shapes_sample_labels(query, n=n, seed=seed)
    if ref.strip().partition(":")[0] in SETS:
        root = Path(data_root).expanduser() if data_root is not None else default_data_root()
        return sample_set_labels(ref.strip(), n=n, seed=seed, data_root=root)
    return load_dataset(ref, n=n, seed=seed, data_root=data_root).labels


def _rendered(ref: str) -> tuple[str, str] | None:
    """``("digits", "")`` or ``("shapes", <options query>)`` for the datasets that ship with the package (their
    labels can be drawn without their images), else None. ``shapes?`` with nothing after it is refused."""
    text = ref.strip()
    kind, _, rest = text.partition(":")
    if kind == "digits" and not rest:
        return "digits", ""
    base, query_mark, query = text.partition("?")
    if base != "shapes":
        return None
    if query_mark and not query:
        raise InvalidReference("dataset 'shapes?' has an empty option list; write shapes, or e.g. shapes?colors=8")
    return "shapes", query


def list_datasets(data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """JSON-able description of every dataset (for ``GET /v1/sources``), with whether its files are here."""
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    entries: list[dict[str, Any]] = [
        {
            "name": "digits",
            "syntax": "digits",
            "description": "scikit-learn's 1797 handwritten 8x8 digits, bundled",
            "n_classes": 10,
            "available": True,
        },
        {
            "name": "shapes",
            "syntax": "shapes[?colors=<3-10>&shapes=<3-8>&size=<16-512>&caption_noise=<0-1>]",
            "description": (
                "coloured geometric shapes rendered from the seed (no download), one class per colour × shape "
                "(8 × 6 = 48 by default), natural captions from ten templates; its outcome holds out colours "
                "and shapes (docs/metrics.md, 'The shapes dataset'); caption_noise: the fraction of captions "
                "from another class"
            ),
            "n_classes": 48,
            "available": True,
        },
    ]
    for name, spec in SETS.items():
        entries.append(
            {
                "name": name,
                "syntax": f"{name}[:train]",
                "description": f"torchvision {name} under {root / spec.folder}; test split unless :train",
                "n_classes": spec.n_classes,
                "available": {split: files_present(name, split, root) for split in SPLITS},
            }
        )
    entries.append(
        {
            "name": "manifest",
            "syntax": "manifest:<file.jsonl>",
            "description": f'your pairs: lines {{"image", "caption", "label"?}} under {root}',
            "n_classes": None,
            "available": True,
        }
    )
    return entries
