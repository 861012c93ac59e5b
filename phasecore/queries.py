"""The ``key=value&...`` query of a reference (model options, zoo recipes, ``shapes?`` options), read key by key."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from urllib.parse import parse_qsl

from phasecore.errors import InvalidReference


def query_pairs(
    query: str, known: Collection[str], *, unknown: Callable[[str], str], twice: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """The decoded ``(key, value)`` pairs of ``query`` in order (blank values kept), each key checked as it comes:
    InvalidReference with ``unknown(key)`` for a key not in ``known``, with ``twice(key)`` for a key given again."""
    seen: set[str] = set()
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in known:
            raise InvalidReference(unknown(key))
        if key in seen:
            raise InvalidReference(twice(key))
        seen.add(key)
        yield key, value
