"""phasecore: the screening engine (no web or database imports).

Public entry points:
- ``phasecore.kernels.ntk_gram``: empirical trace NTK Gram (METRICS §1)
- ``phasecore.kernels.agop.agop_spectrum``: AGOP spectrum (METRICS §4)
- ``phasecore.sources.load_encoder``: model sources (timm, hf, file, pkg)
- ``phasecore.data.load_dataset``: paired (image, caption, label) samples
"""

#: Part of every profile key and result: bump it whenever a change can move a number, so cached
#: profiles computed by an older engine are never mixed with new ones.
ENGINE_VERSION = "0.3.0"

#: The version of the metric definitions (docs/metrics.md) the numbers follow; results of another version are
#: never pooled.
METRICS_VERSION = 2

__all__ = ["ENGINE_VERSION", "METRICS_VERSION"]
