"""Child processes that must not outlive their parent (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing)."""

from __future__ import annotations

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int, parent: int) -> bool:
    """Ask the kernel to send this process ``signum`` when its parent thread ends; exit at once if ``parent``
    (the pid the parent had) is already gone. Returns whether the kernel took the request (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to call
        return False
    taken = bool(libc.prctl(_PR_SET_PDEATHSIG, signum) == 0)
    if os.getppid() != parent:  # the parent died before the request above was made
        os._exit(1)
    return taken
