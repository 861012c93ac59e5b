"""The paper's phases and screening rules at and around their thresholds (METRICS §3, §5)."""

import json
import math

import pytest

from phasecore.screening.paper_rules import PAPER, pair_rules, phase_of

RULE_KEYS = {
    "value",
    "threshold",
    "predicts_failure",
    "claimed_accuracy",
    "source",
    "rule",
    "note",
    "threshold_note",
    "lower_bound",
}


def _rules(**overrides):
    inputs = {
        "s_ntk_vision": 0.95,
        "s_ntk_language": 0.30,
        "agop_ratio_vision": 1e7,
        "agop_ratio_language": 10.0,
        "s_ntk_cross": 0.2,
    }
    inputs.update(overrides)
    return pair_rules(**inputs)


@pytest.mark.parametrize(
    ("s", "phase"),
    [
        (0.0, "chaotic"),
        (0.4999, "chaotic"),
        (0.5, "optimal"),
        (0.8999, "optimal"),
        (0.9, "lazy"),
        (1.0, "lazy"),
        (math.nan, "undetermined"),
        (math.inf, "undetermined"),
        (None, "undetermined"),
    ],
)
def test_phase_bands_match_the_paper(s, phase):
    assert phase_of(s) == phase


def test_derived_values_and_verdicts():
    derived, predictions = _rules()
    assert derived["delta_ntk"] == pytest.approx(0.65)
    assert derived["log_agop"] == pytest.approx(7.0)
    assert derived["combined"] == pytest.approx(0.65 * 7.0)
    assert derived["agop_ratio_max"] == 1e7
    assert (derived["phase_vision"], derived["phase_language"]) == ("lazy", "chaotic")
    assert set(predictions) == {"agop_rule", "combined_rule", "ntk_difference_rule", "cross_phase_rule"}
    for prediction in predictions.values():
        assert set(prediction) == RULE_KEYS
        assert prediction["predicts_failure"] is True
        assert PAPER["title"] in prediction["source"]
        assert "not verified" in prediction["source"]
    assert predictions["agop_rule"]["claimed_accuracy"] == 0.94
    assert predictions["combined_rule"]["claimed_accuracy"] == 0.96
    assert predictions["ntk_difference_rule"]["claimed_accuracy"] is None
    assert predictions["cross_phase_rule"]["claimed_accuracy"] is None
    assert predictions["cross_phase_rule"]["value"] == 0.2
    json.dumps([derived, predictions], allow_nan=False)


def test_every_threshold_is_strict_at_its_boundary():
    # ΔNTK = 0.5 exactly, log(AGOP) = 5 exactly: combined = 2.5 exactly
    derived, predictions = _rules(s_ntk_vision=0.75, s_ntk_language=0.25, agop_ratio_vision=1e5, s_ntk_cross=0.25)
    assert derived["delta_ntk"] == 0.5 and derived["combined"] == 2.5
    assert predictions["ntk_difference_rule"]["predicts_failure"] is False
    assert predictions["combined_rule"]["predicts_failure"] is False
    assert predictions["cross_phase_rule"]["predicts_failure"] is False
    _, predictions = _rules(agop_ratio_vision=1e6)
    assert predictions["agop_rule"]["predicts_failure"] is False
    _, predictions = _rules(agop_ratio_vision=1.000001e6)
    assert predictions["agop_rule"]["predicts_failure"] is True


def test_a_safe_pair_predicts_no_failure():
    _, predictions = _rules(
        s_ntk_vision=0.7, s_ntk_language=0.6, agop_ratio_vision=1e3, agop_ratio_language=1e2, s_ntk_cross=0.9
    )
    assert not any(p["predicts_failure"] for p in predictions.values())


def test_an_infinite_agop_ratio_is_a_verdict_not_a_crash():
    derived, predictions = _rules(agop_ratio_language=math.inf)
    assert derived["log_agop"] is None and derived["agop_ratio_max"] is None
    assert any("infinite" in note for note in derived["notes"])
    assert predictions["agop_rule"]["predicts_failure"] is True
    assert predictions["agop_rule"]["value"] is None
    assert "inf" in predictions["agop_rule"]["note"]
    assert predictions["combined_rule"]["predicts_failure"] is True  # ΔNTK > 0 times +inf
    json.dumps([derived, predictions], allow_nan=False)

    derived, predictions = _rules(s_ntk_vision=0.4, s_ntk_language=0.4, agop_ratio_vision=math.inf)
    assert derived["combined"] is None
    assert predictions["combined_rule"]["predicts_failure"] is None  # 0 × ∞
    assert predictions["ntk_difference_rule"]["predicts_failure"] is False


@pytest.mark.parametrize(
    ("overrides", "undetermined"),
    [
        ({"s_ntk_vision": math.nan}, {"combined_rule", "ntk_difference_rule"}),
        ({"s_ntk_language": None}, {"combined_rule", "ntk_difference_rule"}),
        ({"agop_ratio_vision": math.nan}, {"agop_rule", "combined_rule"}),
        ({"agop_ratio_language": 0.5}, {"agop_rule", "combined_rule"}),
        ({"s_ntk_cross": math.nan}, {"cross_phase_rule"}),
    ],
)
def test_unusable_inputs_leave_only_their_rules_undetermined(overrides, undetermined):
    derived, predictions = _rules(**overrides)
    for name, prediction in predictions.items():
        if name in undetermined:
            assert prediction["predicts_failure"] is None, name
            assert prediction["note"], name
        else:
            assert prediction["predicts_failure"] is True, name
    assert derived["notes"]
    json.dumps([derived, predictions], allow_nan=False)


def test_the_agop_thresholds_are_labelled_as_the_papers_and_uncalibrated():
    _, predictions = _rules()
    for rule in ("agop_rule", "combined_rule"):
        assert "paper's threshold" in predictions[rule]["threshold_note"]
        assert "uncalibrated for λ_1/λ_k" in predictions[rule]["threshold_note"]
        assert "λ_1/λ_k" in predictions[rule]["rule"]


def test_a_null_agop_ratio_gives_no_verdict_with_its_reason():
    reason = "λ_1/λ_16 needs U·M ≥ 8k = 128 distinct (input, probe) rows; this spectrum has 40"
    derived, predictions = _rules(agop_ratio_language=None, agop_reasons=(None, reason))
    assert derived["log_agop"] is None
    for rule in ("agop_rule", "combined_rule"):
        assert predictions[rule]["predicts_failure"] is None and predictions[rule]["note"]
    assert any(reason in note for note in derived["notes"])
    assert predictions["ntk_difference_rule"]["predicts_failure"] is True


def test_an_unstable_agop_ratio_gives_the_agop_rules_no_verdict():
    derived, predictions = _rules(agop_unstable=(True, False))
    assert derived["log_agop"] == pytest.approx(7.0)  # the value is still reported
    for rule in ("agop_rule", "combined_rule"):
        assert predictions[rule]["predicts_failure"] is None
        assert "unstable" in predictions[rule]["note"]
    assert predictions["cross_phase_rule"]["predicts_failure"] is True


def test_a_censored_ratio_is_a_lower_bound_that_can_only_confirm_failure():
    # λ_1/λ_k ≥ 1e5: below the AGOP rule's 1e6, so it cannot say "no failure"
    derived, predictions = _rules(agop_ratio_vision=1e5, agop_censored=(True, False))
    agop = predictions["agop_rule"]
    assert agop["lower_bound"] and agop["predicts_failure"] is None and "lower bound" in agop["note"]
    # ΔNTK × log ≥ 0.65 × 5 = 3.25 > 2.5: the combined rule holds whatever the true ratio
    combined = predictions["combined_rule"]
    assert combined["lower_bound"] and combined["predicts_failure"] is True
    _, predictions = _rules(s_ntk_vision=0.35, agop_ratio_vision=1e5, agop_censored=(True, False))
    assert predictions["combined_rule"]["predicts_failure"] is None  # 0.05 × 5 ≤ 2.5 from a bound: unknown
    # a censored ratio that is not the larger one changes nothing
    _, predictions = _rules(agop_ratio_language=1e5, agop_censored=(False, True))
    assert predictions["agop_rule"]["predicts_failure"] is True and not predictions["agop_rule"]["lower_bound"]


def test_paper_record_names_the_claims():
    assert PAPER["title"].startswith("Phase Incompatibility Explains Cross-Modal Alignment Failure")
    assert PAPER["claims"]["agop_rule"]["accuracy"] == 0.94
    assert PAPER["claims"]["combined_rule"]["accuracy"] == 0.96


def test_an_s_ntk_near_a_phase_edge_is_noted() -> None:
    """Float rounding moves S_NTK by about 0.005 (docs/metrics.md §3): a value that close to 0.5 or 0.9 is noted."""
    from phasecore.screening.pipeline import _phase_edge_notes

    assert _phase_edge_notes("vision", 0.8981) and "phase edge 0.9" in _phase_edge_notes("vision", 0.8981)[0]
    assert _phase_edge_notes("language", 0.5031) and not _phase_edge_notes("vision", 0.9809)
    assert _phase_edge_notes("vision", None) == [] and _phase_edge_notes("vision", float("nan")) == []
