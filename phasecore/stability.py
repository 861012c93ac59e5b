"""Import alias kept from before the engine was split by concept (the README's form then):
``from phasecore.stability import stability_probe``. The stability probe lives in ``phasecore.kernels.stability``."""

from phasecore.kernels.stability import StabilityResult, stability_probe

__all__ = ["StabilityResult", "stability_probe"]
