"""``cifar10``, ``cifar100``, ``svhn`` (the paper's datasets) through torchvision from a local root.

``<name>`` is the test split, ``<name>:train`` the training split. Files are read from the data root;
they are downloaded only when the caller allows it, otherwise a missing file is an AssetUnavailable
that names the folder and the files to put there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasecore.data.base import PairedDataset
from phasecore.data.captions import DIGIT_WORDS, house_number_captions, object_captions
from phasecore.data.sampling import sample_pairs
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


def _open(name: str, split: str, root: Path, allow_download: bool) -> Any:
    spec = SETS[name]
    folder = root / spec.folder
    if not allow_download and not files_present(name, split, root):
        missing = [f for f in spec.files[split] if not (folder / f).is_file()]
        raise AssetUnavailable(
            f"dataset {name} ({split} split) is not in {folder}: missing {', '.join(missing)}; "
            f"{spec.fetch.format(root=root)}, or point PHASESCREEN_DATA_ROOT at a root that has them, "
            "or allow downloads"
        )
    try:
        return spec.open(root, split, allow_download)
    except (RuntimeError, OSError) as error:  # checksum failure, or the download itself failed
        raise AssetUnavailable(
            f"dataset {name} ({split} split) in {folder} could not be read or fetched ({error}); "
            f"replace its files with intact copies ({spec.fetch.format(root=root)})"
        ) from error


def load_torchvision_pairs(
    ref: str, *, n: int, seed: int, data_root: Path, allow_download: bool
) -> PairedDataset:
    """``cifar10[:train]``, ``cifar100[:train]``, ``svhn[:train]``.

    Images ``(32, 32, 3) float32 in [0, 1]``; ids ``<name>:<split>:<index>``.
    """
    name, _, split = ref.partition(":")
    split = split or "test"
    if split not in SPLITS:
        raise InvalidReference(f"dataset {ref!r}: split {split!r} is not one of {', '.join(SPLITS)}")
    dataset = _open(name, split, data_root, allow_download)
    if name == "svhn":  # stored (M, 3, 32, 32); labels 0-9 (torchvision maps SVHN's 10 to 0)
        pixels, labels, class_names = dataset.data.transpose(0, 2, 3, 1), dataset.labels, list(DIGIT_WORDS)
    else:
        pixels, labels, class_names = dataset.data, dataset.targets, list(dataset.classes)
    spec = SETS[name]
    return sample_pairs(
        name if split == "test" else f"{name}:{split}",
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        class_captions={c: spec.captions(c, class_name) for c, class_name in enumerate(class_names)},
        image_at=lambda i: (pixels[i] / np.float32(255)).astype(np.float32),
        n=n,
        seed=seed,
        id_prefix=f"{name}:{split}",
        extra={"split": split},
    )
