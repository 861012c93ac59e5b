"""Kernels of one model (§1, §3, §4): the empirical NTK Gram, the stability probe and the AGOP spectrum.

``from phasecore.kernels import KernelConfig, ntk_gram, probe_gram, agop_spectrum, stability_probe``
"""

from phasecore.kernels.agop import agop_spectrum
from phasecore.kernels.config import KernelConfig
from phasecore.kernels.engine import ProbeGram, make_probes, ntk_gram, probe_gram
from phasecore.kernels.stability import stability_probe

__all__ = ["KernelConfig", "ProbeGram", "agop_spectrum", "make_probes", "ntk_gram", "probe_gram", "stability_probe"]
