"""The contrastive outcome (phasecore.groundtruth.contrastive): linear heads trained per held-out group on frozen
tower outputs, scored on the held-out values (what ``phasescreen outcome simulate`` reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phasecore.data import load_dataset
from phasecore.groundtruth.contrastive import contrastive_outcome, held_out_contrastive
from phasecore.sources import load_encoder


def _planted(shared: bool, seed: int = 0, n_classes: int = 12, per_class: int = 30):
    """Two 'towers' whose outputs are class codes plus noise: the same code through two random linear maps when
    ``shared``, independent codes otherwise (the caption side's templates follow its own code)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    code_v = rng.normal(size=(n_classes, 8))
    code_l = code_v if shared else rng.normal(size=(n_classes, 8))
    A, B = rng.normal(size=(8, 24)), rng.normal(size=(8, 16))
    E_v = code_v[labels] @ A + 0.3 * rng.normal(size=(labels.size, 24))
    E_l = code_l[labels] @ B + 0.3 * rng.normal(size=(labels.size, 16))
    templates = [code_l[c] @ B + 0.3 * rng.normal(size=(3, 16)) for c in range(n_classes)]
    return E_v, E_l, labels, templates


def test_a_shared_code_aligns_on_unseen_classes_and_independent_codes_do_not() -> None:
    # the heads see no pair of a held-out group's classes: only a map that carries over to unseen classes scores
    shared = held_out_contrastive(*_planted(True), steps=100)
    independent = held_out_contrastive(*_planted(False), steps=100)
    assert shared["n_groups"] == 6 and shared["examples"] == 100 * 128
    assert shared["outcome"] == "aligned" and shared["value"] > 0.6, shared["group_scores"]
    assert independent["outcome"] != "aligned" and abs(independent["value"]) < 0.35, independent["group_scores"]


def test_the_run_is_deterministic_and_the_groups_are_the_datasets_own() -> None:
    E_v, E_l, labels, templates = _planted(True, seed=3)
    groups = [{"classes": [0, 1], "exclude": [2], "held_out": {"colors": ["a", "b"]}}, {"classes": [3, 4, 5]}]
    first = held_out_contrastive(E_v, E_l, labels, templates, groups=groups, steps=20, seed=5)
    again = held_out_contrastive(E_v, E_l, labels, templates, groups=groups, steps=20, seed=5)
    assert first == again
    assert [g["classes"] for g in first["group_scores"]] == [[0, 1], [3, 4, 5]]
    assert first["group_means"] == {"colors": first["group_scores"][0]["s_g"]}
    with pytest.raises(ValueError, match="one row per pair"):
        held_out_contrastive(E_v[:-1], E_l, labels, templates)
    with pytest.raises(ValueError, match="outside"):
        held_out_contrastive(E_v, E_l, labels, templates, groups=[{"classes": [0, 99]}])


def test_a_jointly_trained_zoo_pair_scores_above_its_unimodal_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real towers (width 8, 100 steps, trained here): the joint pair's heads carry colour to held-out values."""
    monkeypatch.setenv("PHASESCREEN_HOME", str(tmp_path))
    data = load_dataset("shapes?colors=10&shapes=8&size=32", n=400, seed=1)

    def outcome(vision: str, text: str) -> dict:
        return contrastive_outcome(load_encoder(vision), load_encoder(text), data, failure_threshold=0.2)

    joint = outcome("zoo:shapes?tower=vision&width=8&steps=100", "zoo:shapes?tower=text&width=8&steps=100")
    alone = outcome(
        "zoo:shapes?tower=vision&mode=unimodal&width=8&steps=100",
        "zoo:shapes?tower=text&mode=unimodal&width=8&steps=100",
    )
    assert joint["value"] > alone["value"] + 0.2, (joint["group_means"], alone["group_means"])
    assert joint["group_means"]["colors"] > alone["group_means"]["colors"] + 0.2
