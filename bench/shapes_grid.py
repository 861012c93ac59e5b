"""Write a PNG grid of ``shapes`` examples with their captions: ``python bench/shapes_grid.py docs/shapes.png``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phasecore.data.shapes import save_grid  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/shapes.png"
    save_grid(out, ref_query="size=128", n=12, seed=2)  # seed 2 shows all six shapes and eight colours
    print(f"wrote {out}")
