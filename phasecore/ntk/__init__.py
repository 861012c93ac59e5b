"""Empirical NTK Grams (METRICS §1): ``from phasecore.ntk import ntk_gram``."""

from phasecore.ntk.engine import ProbeGram, make_probes, ntk_gram, probe_gram

__all__ = ["ProbeGram", "make_probes", "ntk_gram", "probe_gram"]
