"""Matrix-based Rényi entropy and the information plane (METRICS §9)."""

import math

import numpy as np
import pytest

from phasecore.similarity.infoplane import (
    information_plane,
    mutual_information,
    normalised_gram,
    rbf_gram,
    renyi_entropy,
)


def test_entropy_of_distinct_and_of_identical_samples():
    assert renyi_entropy(normalised_gram(np.eye(16))) == pytest.approx(4.0)  # log2 N
    assert renyi_entropy(normalised_gram(np.ones((16, 16)))) == pytest.approx(0.0, abs=1e-9)


def test_labels_carry_log2_classes_bits_and_distinct_inputs_carry_all_of_them():
    labels = np.repeat(np.arange(4), 10)
    Y = np.eye(4)[labels]
    A_y = normalised_gram(Y @ Y.T)
    assert renyi_entropy(A_y) == pytest.approx(2.0, abs=1e-6)
    # K_X = I (every input distinct): A_X ∘ A_Y = A_X / N, so I(X;Y) = H(Y) exactly
    assert mutual_information(normalised_gram(np.eye(40)), A_y) == pytest.approx(2.0, abs=1e-6)
    A_x = normalised_gram(rbf_gram(np.random.default_rng(0).normal(size=(40, 3))))
    assert 0.0 < mutual_information(A_x, A_y) <= min(renyi_entropy(A_x), 2.0) + 1e-9


def test_information_plane_ratio_and_compression():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 15)
    Y = np.eye(4)[labels]
    X = rng.normal(size=(60, 10)) + 2.0 * np.eye(4, 10)[labels]
    first = rbf_gram(X)  # the input itself: no compression yet
    last = rbf_gram(np.eye(4)[labels] + 0.05 * rng.normal(size=(60, 4)))  # only the label survives
    out = information_plane(rbf_gram(X), [first, last], Y)
    assert set(out) == {
        "alpha", "n", "h_x", "h_y", "i_xt", "i_yt", "ratio", "ratio_last", "compression", "paper_rule",
    }  # fmt: skip
    assert 0.0 < out["i_xt"][0] <= out["h_x"] + 1e-9
    assert all(0.0 < i <= out["h_y"] + 1e-9 for i in out["i_yt"])
    assert out["i_xt"][1] < out["i_xt"][0]
    assert out["compression"] > 0.2
    assert out["ratio"][1] > out["ratio"][0]
    assert out["ratio_last"] == out["ratio"][-1]
    assert isinstance(out["paper_rule"]["predicts_failure"], bool)
    assert "not verified" in out["paper_rule"]["source"]
    assert all(math.isfinite(v) for v in out["i_xt"] + out["i_yt"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="positive diagonal"):
        normalised_gram(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least one"):
        information_plane(np.eye(3), [], np.eye(3))


def test_model_information_plane_reads_every_block_then_the_embedding() -> None:
    """METRICS §9 per model: X the inputs, T each block's pooled output then the embedding, Y the labels."""
    import torch
    from torch import nn

    from phasecore.screening.profile import block_list
    from phasecore.similarity.infoplane import model_information_plane

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(30, 6, dtype=torch.float64)
    labels = np.arange(30) % 3
    plane = model_information_plane(model, x, labels, block_list(model), chunk_size=7)
    assert plane["representations"] == ["0", "1", "2", "3", "4", "embedding"] and len(plane["i_xt"]) == 6
    assert all(np.isfinite(v) and v >= -1e-9 for v in plane["i_xt"] + plane["i_yt"])
    assert plane["paper_rule"]["predicts_failure"] in (True, False)
    again = model_information_plane(model, x, labels, block_list(model), chunk_size=30)
    np.testing.assert_allclose(again["i_xt"], plane["i_xt"], rtol=1e-9)  # chunking does not move it
