"""Alignment training of a pair and the paper's phase-aware methods (issue 22; docs/phase-aware.md).

- ``align``: the trainer (two encoders, linear heads, symmetric InfoNCE on the training classes, scored on
  held-out values per METRICS §7 at a logarithmic grid of examples seen): ``align_pair``, ``AlignSettings``;
- ``methods``: the four methods of the paper's Table 2 (fixed rate, adaptive rate η0·S_NTK(t), phase
  regulariser, compatible initialisation), the S_NTK measurement and the output-scale search;
- ``experiment``: the Table 2 experiment on zoo towers (unimodal and random starting pairs, seeds, the joint
  pair as the ceiling, the screening beforehand), cached per run, with its tables and figure
  (``phasecore.presentation.phase_aware_page``).
"""

#: the four methods of the paper's Table 2, here so that naming them (the CLI's choices) imports no torch
METHODS: tuple[str, ...] = ("fixed", "adaptive", "regulariser", "compatible")
