"""Which installed versions differ from a lock file: `python .ci/drift.py requirements-dev.lock`.

Run with the interpreter of the venv to compare (make test-latest runs it in .venv-latest). Prints one line per
package whose version differs, is missing from the venv or is not in the lock; always exits 0 (drift is
information: lint and the tests decide whether it matters).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[_norm(match[1])] = match[2]
    return pins


def main(argv: list[str]) -> int:
    lock = locked(Path(argv[0] if argv else "requirements-dev.lock"))
    installed = {_norm(dist.metadata["Name"]): dist.version for dist in distributions()}
    installed.pop("phasescreen", None)
    rows = []
    for name in sorted(lock.keys() | installed.keys()):
        want, have = lock.get(name), installed.get(name)
        if want != have:
            rows.append(f"  {name:32} lock {want or '(absent)':>14}  newest {have or '(absent)':>14}")
    print(f"drift against the lock: {len(rows)} of {len(lock)} locked packages differ or are new")
    print("\n".join(rows) if rows else "  none: the newest versions are the locked ones")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
