"""``manifest:<file.jsonl>``: the user's own pairs.

One JSON object per line: ``{"image": "imgs/0001.png", "caption": "a red bicycle", "label": 3}``.

- ``image``: a path relative to the manifest's folder (or absolute); it must lie under the data root,
  like the manifest itself. Any format Pillow reads; converted to RGB ``float32`` in ``[0, 1]``.
- ``caption``: a non-empty string.
- ``label`` (optional): an int or a string naming the class. Either every line has one or none does.
  Without labels, each distinct caption is its own class: pairs that share a caption are the
  same class, which is what a kernel or a retrieval score can tell apart. Classes are numbered in
  sorted order of their label (or caption); a class's ``class_captions`` are its distinct captions.

Sample ids are ``manifest:<row>``, the 0-based index among the non-blank lines.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from phasecore.data.base import PairedDataset
from phasecore.data.sampling import sample_pairs
from phasecore.errors import InvalidReference
from phasecore.paths import resolve_under


def _read_text(path: Path, name: str) -> str:
    """The manifest's text; a folder, an unreadable file or bytes that are not UTF-8 are the user's to fix."""
    if path.is_dir():
        raise InvalidReference(f"{name} is a folder, not a manifest file; name a .jsonl file inside it")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidReference(
            f"{name} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
            "save the manifest as UTF-8"
        ) from error
    except OSError as error:
        raise InvalidReference(f"{name} cannot be read: {error.strerror or error}") from error


def _read_rows(path: Path, name: str) -> list[dict[str, Any]]:
    rows = []
    for line_no, line in enumerate(_read_text(path, name).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidReference(f"{where} is not JSON: {error}") from error
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not row["image"]:
            raise InvalidReference(f'{where} needs "image": a path string')
        if not isinstance(row.get("caption"), str) or not row["caption"].strip():
            raise InvalidReference(f'{where} needs "caption": a non-empty string')
        label = row.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int | str)):
            raise InvalidReference(f'{where}: "label" must be an int or a string, not {label!r}')
        rows.append(row)
    if not rows:
        raise InvalidReference(f"{name} has no pairs")
    return rows


def _classes(rows: list[dict[str, Any]], name: str) -> tuple[np.ndarray, list[str], dict[int, list[str]]]:
    """Labels ``(M,)``, class names and each class's distinct captions."""
    labelled = ["label" in row and row["label"] is not None for row in rows]
    if any(labelled) and not all(labelled):
        raise InvalidReference(
            f"{name}: {labelled.count(False)} lines lack a label; label every line or none"
        )
    keys = [row["label"] if all(labelled) else row["caption"] for row in rows]
    # ints sort numerically, strings alphabetically; a mix sorts by text
    values = sorted(set(keys)) if len({type(k) for k in keys}) == 1 else sorted(set(keys), key=str)
    index = {v: c for c, v in enumerate(values)}
    labels = np.array([index[k] for k in keys], dtype=np.int64)
    captions: dict[int, list[str]] = {c: [] for c in range(len(values))}
    for row, c in zip(rows, labels, strict=True):
        if row["caption"] not in captions[int(c)]:
            captions[int(c)].append(row["caption"])
    return labels, [str(v) for v in values], captions


def _read_image(root: Path, manifest: Path, row: dict[str, Any], row_index: int) -> np.ndarray:
    path = resolve_under(root, manifest.parent / row["image"], what="image")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidReference(f"image {row['image']!r} (row {row_index}) cannot be read: {error}") from error


def load_manifest_pairs(file: str, *, n: int, seed: int, data_root: Path) -> PairedDataset:
    """A balanced sample of ``n`` pairs of the manifest ``file`` (a path under ``data_root``)."""
    root = data_root.expanduser().resolve()
    path = resolve_under(root, file, what="manifest")
    name = f"manifest:{path.relative_to(root)}"
    rows = _read_rows(path, name)
    labels, class_names, class_captions = _classes(rows, name)
    return sample_pairs(
        name,
        labels=labels,
        class_names=class_names,
        class_captions=class_captions,
        image_at=lambda i: _read_image(root, path, rows[i], i),
        caption_at=lambda i: rows[i]["caption"],
        n=n,
        seed=seed,
        id_prefix="manifest",
        extra={"manifest_sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
    )
