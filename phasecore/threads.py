"""Torch's intra-op thread count, set for a block: ``with single_thread(): ...``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread inside the block (tiny matrices, where threads only wait on each other, or a seeded
    run whose float reductions must not depend on the machine's core count); the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
