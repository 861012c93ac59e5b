"""The word vocabulary of the ``shapes`` captions and the zoo's tokenizer (no torch).

Words are lower-case runs of letters, hyphenated words kept whole (``medium-sized``); punctuation is dropped.
The vocabulary is every word a ``shapes`` sample caption can hold (its templates filled with every colour, shape,
size, position and background word), sorted, after three special tokens: ``[PAD]`` (0), ``[UNK]`` (1, any word
outside it) and ``[MASK]`` (2, the masked-word objective). A word only the class prototypes use would be an
untrained token, so the prototype templates use sample-caption words only (tests/phasecore/data/test_shapes.py
checks it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from phasecore.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, TEMPLATES

PAD, UNK, MASK = 0, 1, 2
SPECIALS = ("[PAD]", "[UNK]", "[MASK]")
#: the longest caption in words is 13; captions are cut at this many
MAX_WORDS = 24
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, punctuation dropped."""
    return _WORD.findall(text.lower())


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """``SPECIALS`` then every word a ``shapes`` sample caption can hold, sorted."""
    found: set[str] = set()
    for template in TEMPLATES:
        found.update(words(re.sub(r"\{[a-z_]+\}", " ", template)))
    for text in (*COLORS, *SIZES, *POSITIONS, *BACKGROUNDS, "a an"):
        found.update(words(text))
    for shape, alternatives in SHAPES.items():
        found.update(words(shape))
        for alternative in alternatives:
            found.update(words(alternative))
    return SPECIALS + tuple(sorted(found))


@functools.cache
def _index() -> dict[str, int]:
    return {word: i for i, word in enumerate(vocabulary())}


def encode(captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> ``input_ids`` and ``attention_mask``, ``(B, T) int64``, padded with ``PAD`` to the longest
    (at most ``MAX_WORDS``); unknown words are ``UNK``."""
    index = _index()
    rows = [[index.get(w, UNK) for w in words(c)][:MAX_WORDS] or [UNK] for c in captions]
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), PAD, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
