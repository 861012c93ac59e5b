"""Import alias of releases before 0.4: ``from phasecore.ntk import ntk_gram, probe_gram`` (the README's form until
then). The kernels live in ``phasecore.kernels``."""

from phasecore.kernels.engine import ProbeGram, make_probes, ntk_gram, probe_gram

__all__ = ["ProbeGram", "make_probes", "ntk_gram", "probe_gram"]
