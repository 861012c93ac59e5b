"""Import alias kept from before the engine was split by concept (the README's form then):
``from phasecore.ntk import ntk_gram, probe_gram``. The kernels live in ``phasecore.kernels``."""

from phasecore.kernels.engine import ProbeGram, make_probes, ntk_gram, probe_gram

__all__ = ["ProbeGram", "make_probes", "ntk_gram", "probe_gram"]
