"""Torch's intra-op thread count, set for a block: ``with torch_threads(n): ...``, ``with single_thread(): ...``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` intra-op threads inside the block; the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single_thread() -> contextlib.AbstractContextManager[None]:
    """One intra-op thread inside the block (tiny matrices, where threads only wait on each other, or a seeded
    run whose float reductions must not depend on the machine's core count); the caller's count restored after."""
    return torch_threads(1)
