"""``cifar10``, ``cifar100``, ``svhn`` (the paper's datasets) through torchvision from a local root.

``<name>`` is the test split, ``<name>:train`` the training split. Files are read from the data root;
they are downloaded only when the caller allows it, otherwise a missing file is an AssetUnavailable
that names the folder and the files to put there. :func:`sample_set_labels` reads only the labels, from the same
files and without torchvision, for the API's request check (the API process imports no torch).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasecore.data.base import PairedDataset
from phasecore.data.captions import DIGIT_WORDS, house_number_captions, object_captions
from phasecore.data.sampling import balanced_indices, sample_pairs
from phasecore.errors import AssetUnavailable, InvalidReference

SPLITS = ("test", "train")


@dataclass(frozen=True)
class TorchvisionSet:
    """Where a torchvision dataset keeps its files, how to open it, and how to caption its classes."""

    n_classes: int
    folder: str  # under the data root ("" = the root itself)
    files: dict[str, list[str]]  # split -> files that must exist in the folder
    fetch: str  # how to get the files, with {root} for the data root
    open: Callable[[Path, str, bool], Any]  # (root, split, download) -> torchvision dataset
    captions: Callable[[int, str], list[str]]  # (label, class name) -> templates


# torchvision's folder and file names (CIFAR10.base_folder, .train_list, .test_list, .meta, .url;
# SVHN.split_list), written out so that naming them (GET /v1/sources, the API's request check) imports no
# torch; tests/phasecore/data/test_data.py checks them against torchvision's. torchvision is imported when a set is
# opened.
def _open_cifar10(root: Path, split: str, download: bool) -> Any:
    from torchvision.datasets import CIFAR10

    return CIFAR10(root, train=split == "train", download=download)


def _open_cifar100(root: Path, split: str, download: bool) -> Any:
    from torchvision.datasets import CIFAR100

    return CIFAR100(root, train=split == "train", download=download)


def _open_svhn(root: Path, split: str, download: bool) -> Any:
    from torchvision.datasets import SVHN

    return SVHN(root, split=split, download=download)


SETS: dict[str, TorchvisionSet] = {
    "cifar10": TorchvisionSet(
        n_classes=10,
        folder="cifar-10-batches-py",
        files={
            "train": [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"],
            "test": ["test_batch", "batches.meta"],
        },
        fetch="unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz in {root}",
        open=_open_cifar10,
        captions=lambda label, name: object_captions(name),
    ),
    "cifar100": TorchvisionSet(
        n_classes=100,
        folder="cifar-100-python",
        files={"train": ["train", "meta"], "test": ["test", "meta"]},
        fetch="unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz in {root}",
        open=_open_cifar100,
        captions=lambda label, name: object_captions(name),
    ),
    "svhn": TorchvisionSet(
        n_classes=10,
        folder="",
        files={"train": ["train_32x32.mat"], "test": ["test_32x32.mat"]},
        fetch="download it from http://ufldl.stanford.edu/housenumbers/ into {root}",
        open=_open_svhn,
        captions=lambda label, name: house_number_captions(label),
    ),
}


def files_present(name: str, split: str, root: Path) -> bool:
    spec = SETS[name]
    return all((root / spec.folder / f).is_file() for f in spec.files[split])


def _require_files(name: str, split: str, root: Path) -> None:
    if not files_present(name, split, root):
        spec = SETS[name]
        folder = root / spec.folder
        missing = [f for f in spec.files[split] if not (folder / f).is_file()]
        raise AssetUnavailable(
            f"dataset {name} ({split} split) is not in {folder}: missing {', '.join(missing)}; "
            f"{spec.fetch.format(root=root)}, or point PHASESCREEN_DATA_ROOT at a root that has them, "
            "or allow downloads"
        )


def _unreadable(name: str, split: str, root: Path, error: Exception) -> AssetUnavailable:
    spec = SETS[name]
    return AssetUnavailable(
        f"dataset {name} ({split} split) in {root / spec.folder} could not be read or fetched ({error}); "
        f"replace its files with intact copies ({spec.fetch.format(root=root)})"
    )


def _open(name: str, split: str, root: Path, allow_download: bool) -> Any:
    if not allow_download:
        _require_files(name, split, root)
    try:
        return SETS[name].open(root, split, allow_download)
    except (RuntimeError, OSError) as error:  # checksum failure, or the download itself failed
        raise _unreadable(name, split, root, error) from error


def _name_and_split(ref: str) -> tuple[str, str]:
    name, _, split = ref.partition(":")
    split = split or "test"
    if split not in SPLITS:
        raise InvalidReference(f"dataset {ref!r}: split {split!r} is not one of {', '.join(SPLITS)}")
    return name, split


def _display_name(name: str, split: str) -> str:
    return name if split == "test" else f"{name}:{split}"


def sample_set_labels(ref: str, *, n: int, seed: int, data_root: Path) -> np.ndarray:
    """The labels ``(n,)`` of ``load_torchvision_pairs(ref, n=n, seed=seed, ...)`` in its order, with the same
    errors for a missing file or an N the classes cannot carry, read from the files as torchvision reads them
    (CIFAR's pickled batches, SVHN's ``y``) but without torchvision or torch, and without the checksum that
    torchvision checks when it opens a set: a damaged file passes here and fails the job that loads it."""
    name, split = _name_and_split(ref)
    _require_files(name, split, data_root)
    try:
        labels, class_names = _read_labels(name, split, data_root)
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
        raise _unreadable(name, split, data_root, error) from error
    rng = np.random.default_rng(seed)  # the first draws of sample_pairs' generator: the same indices
    chosen = balanced_indices(labels, n, rng, class_names=class_names, dataset=_display_name(name, split))
    sample: np.ndarray = labels[chosen]
    return sample


def _read_labels(name: str, split: str, root: Path) -> tuple[np.ndarray, list[str]]:
    """Every label of the split, in torchvision's order, and the class names (torchvision's ``classes``)."""
    spec = SETS[name]
    folder = root / spec.folder
    if name == "svhn":
        from scipy.io import loadmat

        y = loadmat(folder / spec.files[split][0], variable_names=["y"])["y"]
        labels = np.asarray(y, dtype=np.int64).reshape(-1)
        labels[labels == 10] = 0  # as torchvision maps SVHN's 10 to 0
        return labels, list(DIGIT_WORDS)
    *batches, meta = spec.files[split]
    targets: list[int] = []
    for batch in batches:
        with (folder / batch).open("rb") as f:
            entry = pickle.load(f, encoding="latin1")  # noqa: S301 - the operator's data root, as torchvision reads it
        targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    with (folder / meta).open("rb") as f:
        names = pickle.load(f, encoding="latin1")  # noqa: S301
    class_names = names["label_names"] if name == "cifar10" else names["fine_label_names"]
    return np.asarray(targets, dtype=np.int64), list(class_names)


def load_torchvision_pairs(
    ref: str, *, n: int, seed: int, data_root: Path, allow_download: bool
) -> PairedDataset:
    """``cifar10[:train]``, ``cifar100[:train]``, ``svhn[:train]``.

    Images ``(32, 32, 3) float32 in [0, 1]``; ids ``<name>:<split>:<index>``.
    """
    name, split = _name_and_split(ref)
    dataset = _open(name, split, data_root, allow_download)
    if name == "svhn":  # stored (M, 3, 32, 32); labels 0-9 (torchvision maps SVHN's 10 to 0)
        pixels, labels, class_names = dataset.data.transpose(0, 2, 3, 1), dataset.labels, list(DIGIT_WORDS)
    else:
        pixels, labels, class_names = dataset.data, dataset.targets, list(dataset.classes)
    spec = SETS[name]
    return sample_pairs(
        _display_name(name, split),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        class_captions={c: spec.captions(c, class_name) for c, class_name in enumerate(class_names)},
        image_at=lambda i: (pixels[i] / np.float32(255)).astype(np.float32),
        n=n,
        seed=seed,
        id_prefix=f"{name}:{split}",
        extra={"split": split},
    )
