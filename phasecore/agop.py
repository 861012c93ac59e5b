"""Import alias kept from before the engine was split by concept (the README's form then):
``from phasecore.agop import agop_spectrum``. The AGOP spectrum lives in ``phasecore.kernels.agop``."""

from phasecore.kernels.agop import AgopSpectrum, agop_spectrum

__all__ = ["AgopSpectrum", "agop_spectrum"]
