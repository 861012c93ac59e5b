"""phasecore: the screening engine (no web or database imports).

Public entry points:
- ``phasecore.ntk.ntk_gram``: empirical trace NTK Gram (METRICS §1)
- ``phasecore.agop.agop_spectrum``: AGOP spectrum (METRICS §4)
- ``phasecore.sources.load_encoder``: model sources (timm, hf, file, pkg)
- ``phasecore.data.load_dataset``: paired (image, caption, label) samples
"""

ENGINE_VERSION = "0.1.0"

__all__ = ["ENGINE_VERSION"]
