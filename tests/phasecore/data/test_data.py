"""Paired data: balanced, seeded samples of (image, caption, label), and clear errors for missing files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from phasecore.data import list_datasets, load_dataset, sample_labels, torchvision_sets
from phasecore.errors import AssetUnavailable, InvalidReference, InvalidSettings, SourceNotAllowed


def test_digits_default_sample_is_balanced_real_and_varied() -> None:
    pairs = load_dataset("digits")
    assert pairs.n == 576 and pairs.name == "digits"
    assert sorted(np.bincount(pairs.labels, minlength=10)) == [57] * 4 + [58] * 6
    assert len(set(pairs.sample_ids)) == 576

    digits = load_digits()
    for sample in pairs.samples[:20]:
        index = int(sample.sample_id.removeprefix("digits:"))
        assert sample.label == digits.target[index]
        assert sample.image.shape == (8, 8, 3) and sample.image.dtype == np.float32
        np.testing.assert_allclose(sample.image[:, :, 1], digits.images[index] / 16)
        assert sample.caption in pairs.class_captions[sample.label]

    assert all(len(templates) >= 8 for templates in pairs.class_captions.values())
    assert "a handwritten 7" in pairs.class_captions[7]
    assert pairs.n_distinct_captions >= 80  # templates are drawn per sample, not one caption per class
    assert pairs.describe()["n_templates_per_class"] >= 8


def test_digits_sample_is_deterministic_in_seed() -> None:
    first, again = load_dataset("digits", n=100, seed=7), load_dataset("digits", n=100, seed=7)
    other = load_dataset("digits", n=100, seed=8)
    assert first.sample_ids == again.sample_ids and first.captions == again.captions
    assert first.sample_ids != other.sample_ids
    assert first.describe()["sample_ids_sha256"] == again.describe()["sample_ids_sha256"]


@pytest.mark.parametrize("n", [25, 33, 10, 3])
def test_uneven_n_is_balanced_within_one(n: int) -> None:
    counts = np.bincount(load_dataset("digits", n=n).labels, minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("n", [0, 1798])
def test_impossible_n_is_invalid_settings(n: int) -> None:
    with pytest.raises(InvalidSettings, match=f"N={n}"):
        load_dataset("digits", n=n)


@pytest.mark.parametrize(
    ("ref", "folder", "file"),
    [
        ("cifar10", "cifar-10-batches-py", "test_batch"),
        ("cifar100:train", "cifar-100-python", "train"),
        ("svhn", "", "test_32x32.mat"),
    ],
)
def test_missing_torchvision_files_name_folder_and_files(
    tmp_path: Path, ref: str, folder: str, file: str
) -> None:
    with pytest.raises(AssetUnavailable) as error:
        load_dataset(ref, data_root=tmp_path)
    assert str(tmp_path / folder) in str(error.value) and file in str(error.value)


def test_torchvision_sets_become_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torchvision object's arrays become float images and object captions (files faked: no network)."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    fake = SimpleNamespace(
        data=pixels, targets=[i % 10 for i in range(40)], classes=["airplane", *"bcdefghij"]
    )
    spec = dataclasses.replace(torchvision_sets.SETS["cifar10"], open=lambda root, split, download: fake)
    monkeypatch.setitem(torchvision_sets.SETS, "cifar10", spec)
    monkeypatch.setattr(torchvision_sets, "files_present", lambda name, split, root: True)

    pairs = load_dataset("cifar10", n=20, data_root=tmp_path)
    sample = pairs.samples[0]
    index = int(sample.sample_id.rpartition(":")[2])
    assert sample.sample_id.startswith("cifar10:test:")
    np.testing.assert_allclose(sample.image, pixels[index] / 255, atol=1e-7)
    assert "a photo of an airplane" in pairs.class_captions[0]


def test_unknown_dataset() -> None:
    with pytest.raises(InvalidReference, match="manifest:<file.jsonl>"):
        load_dataset("mnist")


def test_list_datasets(tmp_path: Path) -> None:
    listed = json.loads(json.dumps(list_datasets(tmp_path)))
    assert [d["name"] for d in listed] == ["digits", "shapes", "cifar10", "cifar100", "svhn", "manifest"]
    assert listed[1]["available"] is True and listed[1]["n_classes"] == 48
    assert listed[2]["available"] == {"test": False, "train": False}


# --- manifest: -------------------------------------------------------------------------------------


def write_manifest(root: Path, rows: list[dict]) -> Path:
    path = root / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


@pytest.fixture
def pictures(tmp_path: Path) -> list[np.ndarray]:
    """Twelve RGB pictures of three sizes under ``tmp_path/imgs``."""
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (10 + i % 3, 12, 3), dtype=np.uint8) for i in range(12)]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / "imgs" / f"{i}.png")
    return arrays


def test_manifest_round_trip(tmp_path: Path, pictures: list[np.ndarray]) -> None:
    colours = ["red", "green", "blue"]
    rows = [
        {"image": f"imgs/{i}.png", "caption": f"a {colours[i % 3]} thing {i}", "label": colours[i % 3]}
        for i in range(12)
    ]
    write_manifest(tmp_path, rows)

    pairs = load_dataset("manifest:pairs.jsonl", n=6, data_root=tmp_path)
    assert pairs.name == "manifest:pairs.jsonl"
    assert pairs.class_names == ["blue", "green", "red"]
    assert list(np.bincount(pairs.labels)) == [2, 2, 2]
    for sample in pairs.samples:
        row = int(sample.sample_id.removeprefix("manifest:"))
        assert sample.caption == rows[row]["caption"]
        assert pairs.class_names[sample.label] == rows[row]["label"]
        np.testing.assert_allclose(sample.image, pictures[row] / 255, atol=1e-7)
    assert len(pairs.class_captions[0]) == 4  # the distinct captions of class "blue"
    assert pairs.describe()["manifest_sha256"]


def test_manifest_without_labels_makes_each_caption_a_class(
    tmp_path: Path, pictures: list[np.ndarray]
) -> None:
    write_manifest(tmp_path, [{"image": f"imgs/{i}.png", "caption": f"caption {i % 4}"} for i in range(12)])
    pairs = load_dataset("manifest:pairs.jsonl", n=8, data_root=tmp_path)
    assert pairs.class_names == [f"caption {k}" for k in range(4)]
    assert list(np.bincount(pairs.labels)) == [2, 2, 2, 2]
    assert all(s.caption == pairs.class_names[s.label] for s in pairs.samples)

    with pytest.raises(InvalidSettings, match="holds only 12"):
        load_dataset("manifest:pairs.jsonl", n=13, data_root=tmp_path)


def test_unbalanced_manifest_caps_n(tmp_path: Path, pictures: list[np.ndarray]) -> None:
    write_manifest(
        tmp_path, [{"image": f"imgs/{i}.png", "caption": "c", "label": int(i < 2)} for i in range(12)]
    )
    with pytest.raises(InvalidSettings, match=r"class '1'.*N ≤ 4"):
        load_dataset("manifest:pairs.jsonl", n=6, data_root=tmp_path)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("not json", "line 2 is not JSON"),
        (json.dumps({"caption": "x"}), '"image"'),
        (json.dumps({"image": "imgs/0.png", "caption": ""}), '"caption"'),
        (json.dumps({"image": "imgs/0.png", "caption": "x", "label": [1]}), '"label"'),
        (json.dumps({"image": "imgs/0.png", "caption": "x"}), "label every line or none"),
    ],
)
def test_malformed_manifest_lines(tmp_path: Path, pictures: list[np.ndarray], line: str, match: str) -> None:
    good = json.dumps({"image": "imgs/1.png", "caption": "y", "label": 1})
    (tmp_path / "pairs.jsonl").write_text(f"{good}\n{line}\n")
    with pytest.raises(InvalidReference, match=match):
        load_dataset("manifest:pairs.jsonl", n=1, data_root=tmp_path)


def test_manifest_paths_stay_under_the_data_root(tmp_path: Path, pictures: list[np.ndarray]) -> None:
    root = tmp_path / "imgs"
    write_manifest(root, [{"image": "../imgs/0.png", "caption": "x"}])
    with pytest.raises(SourceNotAllowed, match=r"'\.\.'"):
        load_dataset("manifest:pairs.jsonl", n=1, data_root=root)
    write_manifest(root, [{"image": str(tmp_path / "elsewhere.png"), "caption": "x"}])
    with pytest.raises(SourceNotAllowed, match="outside"):
        load_dataset("manifest:pairs.jsonl", n=1, data_root=root)
    with pytest.raises(SourceNotAllowed):
        load_dataset("manifest:../pairs.jsonl", n=1, data_root=root)
    write_manifest(root, [{"image": "missing.png", "caption": "x"}])
    with pytest.raises(AssetUnavailable, match="missing.png"):
        load_dataset("manifest:pairs.jsonl", n=1, data_root=root)


def test_a_manifest_that_is_a_folder_or_not_utf8_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    for ref in ("manifest:.", "manifest:folder"):
        with pytest.raises(InvalidReference, match="is a folder, not a manifest file"):
            load_dataset(ref, n=1, data_root=tmp_path)
    (tmp_path / "latin1.jsonl").write_bytes('{"image": "a.png", "caption": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(InvalidReference, match=r"latin1\.jsonl is not UTF-8 text .*byte 0x.. at offset"):
        load_dataset("manifest:latin1.jsonl", n=1, data_root=tmp_path)


# --- sample_labels: the API's request check ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "n", "seed"),
    [
        *((ref, n, seed) for ref in ("digits", "shapes?size=16") for n, seed in [(64, 0), (64, 99), (25, 7), (3, 1)]),
        ("digits", 576, 2),
        ("shapes", 20, 5),
        ("shapes?colors=3&shapes=4&size=16", 576, 2),
        ("shapes?caption_noise=0.5&size=16", 50, 9),
    ],
)
def test_sample_labels_are_the_loaded_samples_labels(ref: str, n: int, seed: int) -> None:
    """What the API checks is the sample the worker will load: same labels, same order, no image drawn."""
    expected = load_dataset(ref, n=n, seed=seed).labels
    got = sample_labels(ref, n=n, seed=seed)
    assert got.dtype == expected.dtype and got.tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("ref", "n", "error"),
    [
        ("digits", 0, InvalidSettings),
        ("digits", 1798, InvalidSettings),
        ("shapes", 0, InvalidSettings),
        ("shapes?", 10, InvalidReference),
        ("shapes?colors=99", 10, InvalidReference),
        ("shapes?bogus=1", 10, InvalidReference),
        ("mnist", 10, InvalidReference),
        ("digits:x", 10, InvalidReference),
    ],
)
def test_sample_labels_fail_as_loading_does(ref: str, n: int, error: type[Exception]) -> None:
    with pytest.raises(error) as loading:
        load_dataset(ref, n=n)
    with pytest.raises(error) as checking:
        sample_labels(ref, n=n)
    assert str(checking.value) == str(loading.value)


def test_sample_labels_of_a_manifest_read_its_chosen_images(tmp_path: Path) -> None:
    """A manifest is loaded as the worker would: an unreadable image fails the check, as it fails the job."""
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a picture")
    rows = [{"image": "imgs/ok.png", "caption": f"c{i % 2}"} for i in range(6)]
    write_manifest(tmp_path, rows)
    assert sample_labels("manifest:pairs.jsonl", n=4, data_root=tmp_path).tolist() == (
        load_dataset("manifest:pairs.jsonl", n=4, data_root=tmp_path).labels.tolist()
    )
    write_manifest(tmp_path, [*rows[:5], {"image": "imgs/bad.png", "caption": "c1"}])
    with pytest.raises(InvalidReference, match="cannot be read"):
        sample_labels("manifest:pairs.jsonl", n=6, data_root=tmp_path)


def test_torchvision_file_names_are_torchvisions() -> None:
    """The names written out in torchvision_sets (so that naming a set imports no torch) are torchvision's."""
    from torchvision.datasets import CIFAR10, CIFAR100, SVHN

    for name, cls in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
        spec = torchvision_sets.SETS[name]
        meta = cls.meta["filename"]
        assert spec.folder == cls.base_folder
        assert spec.files == {
            "train": [f for f, _ in cls.train_list] + [meta],
            "test": [f for f, _ in cls.test_list] + [meta],
        }
        assert spec.fetch == f"unpack {cls.url} in {{root}}"
    assert torchvision_sets.SETS["svhn"].files == {s: [SVHN.split_list[s][1]] for s in ("train", "test")}


def _fake_torchvision_files(root: Path) -> None:
    """CIFAR-10 (both splits), CIFAR-100 and SVHN test files in torchvision's formats, tiny and seeded."""
    import pickle

    from scipy.io import savemat

    rng = np.random.default_rng(0)

    def batch(path: Path, m: int, classes: int, key: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
        path.write_bytes(pickle.dumps({"data": data, key: rng.permutation(np.arange(m) % classes).tolist()}))

    cifar10 = root / "cifar-10-batches-py"
    for name in ("test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        batch(cifar10 / name, 40, 10, "labels")
    (cifar10 / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"thing{c}" for c in range(10)]}))
    cifar100 = root / "cifar-100-python"
    batch(cifar100 / "test", 600, 100, "fine_labels")
    (cifar100 / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"kind{c}" for c in range(100)]}))
    m = 50
    x = rng.integers(0, 256, (32, 32, 3, m), dtype=np.uint8)
    savemat(root / "test_32x32.mat", {"X": x, "y": (rng.permutation(np.arange(m) % 10) + 1).astype(np.uint8)[:, None]})


@pytest.mark.parametrize(("ref", "n", "seed"), [("cifar10", 20, 0), ("cifar10:train", 64, 3), ("cifar100", 100, 1),
                                                ("svhn", 30, 2)])  # fmt: skip
def test_sample_labels_of_torchvision_sets_are_the_loaded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str, n: int, seed: int
) -> None:
    """The API's check of a torchvision set reads its labels without torchvision: the same labels in the same
    order as the worker's load through torchvision (files faked, torchvision's checksums skipped)."""
    from torchvision.datasets import CIFAR10, SVHN, cifar

    _fake_torchvision_files(tmp_path)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # CIFAR100 inherits it
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    expected = load_dataset(ref, n=n, seed=seed, data_root=tmp_path).labels
    got = sample_labels(ref, n=n, seed=seed, data_root=tmp_path)
    assert got.dtype == expected.dtype and got.tolist() == expected.tolist()
    with pytest.raises(InvalidSettings) as loading:
        load_dataset(ref, n=10_000, data_root=tmp_path)
    with pytest.raises(InvalidSettings) as checking:
        sample_labels(ref, n=10_000, data_root=tmp_path)
    assert str(checking.value) == str(loading.value)


def test_checking_a_torchvision_set_imports_no_torch(tmp_path: Path) -> None:
    _fake_torchvision_files(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    script = (
        "import sys; from pathlib import Path\n"
        "from phasecore.data import sample_labels\n"
        "from phasecore.errors import AssetUnavailable\n"
        f"root = Path({str(tmp_path)!r})\n"
        "svhn = sample_labels('svhn', n=20, data_root=root)\n"
        "cifar100 = sample_labels('cifar100', n=100, data_root=root)\n"
        "print(len(svhn), len(cifar100))\n"
        "try:\n    sample_labels('cifar10', n=20, data_root=root)\n"
        "except AssetUnavailable as exc:\n    print('unreadable' if 'could not be read' in str(exc) else exc)\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["20 100", "unreadable", "[]"]
