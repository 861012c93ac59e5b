"""KernelConfig: one frozen value carries the kernel options of probe_gram, ntk_gram, stability_probe and
agop_spectrum; the same options as keywords replace its fields, and an unknown one is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from phasecore.kernels import KernelConfig, agop_spectrum, ntk_gram, probe_gram, stability_probe


def _model_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return model, torch.randn(12, 5)


def test_a_config_and_the_same_keywords_give_the_same_kernel() -> None:
    model, x = _model_and_inputs()
    config = KernelConfig(probes=2, method="sketch", sketch_dim=64, seed=3, chunk_size=5)
    by_config = ntk_gram(model, x, config)
    by_keywords = ntk_gram(model, x, probes=2, method="sketch", sketch_dim=64, seed=3, chunk_size=5)
    np.testing.assert_array_equal(by_config, by_keywords)
    # a keyword replaces the config's field: seed 4 is another sketch and other probes
    other = ntk_gram(model, x, config, seed=4)
    np.testing.assert_array_equal(other, ntk_gram(model, x, dataclasses.replace(config, seed=4)))
    assert not np.allclose(other, by_config)


def test_params_restrict_theta_and_are_kept_as_a_frozen_set() -> None:
    model, x = _model_and_inputs()
    config = KernelConfig(probes="exact", params=["2.weight", "2.bias"])
    assert config.params == frozenset({"2.weight", "2.bias"})
    last = probe_gram(model, x, config)
    assert last.n_params == 7 * 3 + 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


def test_every_kernel_function_refuses_an_unknown_option() -> None:
    model, x = _model_and_inputs()
    for call in (
        lambda: ntk_gram(model, x, probs=2),
        lambda: probe_gram(model, x, KernelConfig(), sketchdim=8),
        lambda: agop_spectrum(model, x, k=4, probez=2),
        lambda: stability_probe(model, x, steps=1, subset=8, chunksize=4),
    ):
        with pytest.raises(TypeError, match="unknown kernel option"):
            call()


def test_the_stability_probe_and_the_spectrum_take_the_config() -> None:
    model, x = _model_and_inputs()
    config = KernelConfig(probes=2, seed=1, chunk_size=4)
    a = stability_probe(model, x, config, steps=2, subset=8)
    b = stability_probe(model, x, probes=2, seed=1, chunk_size=4, steps=2, subset=8)
    assert (a.s_ntk, a.eta) == (b.s_ntk, b.eta)
    spectrum = agop_spectrum(model, x, config, k=2)
    np.testing.assert_array_equal(spectrum.eigenvalues, agop_spectrum(model, x, probes=2, seed=1, k=2).eigenvalues)


def test_the_readme_s_earlier_imports_still_work() -> None:
    from phasecore.agop import agop_spectrum as old_agop
    from phasecore.ntk import ntk_gram as old_ntk
    from phasecore.stability import stability_probe as old_stability

    assert (old_agop, old_ntk, old_stability) == (agop_spectrum, ntk_gram, stability_probe)
