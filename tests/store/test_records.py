"""The study record of a stored result: one typed record (``StudyRecord``) with every key the study reads."""

from __future__ import annotations

from phasecore.study.failure_model import FEATURES
from phasecore.study.pair_record import StudyRecord
from phasecore.study.quality import COMPARATORS
from store.records import record_of
from tests.helpers.results import full_result


def test_the_record_type_names_every_feature_and_comparator() -> None:
    assert set(FEATURES) | set(COMPARATORS) <= set(StudyRecord.__annotations__)


def test_a_stored_result_becomes_a_record_with_every_key_the_study_reads() -> None:
    result = full_result(metrics={"s_ntk_cross": 0.9, "delta_ntk": 0.5, "log_agop": 6.2, "cka": 0.3})
    record = record_of("timm:a", "hf:b", result)
    assert set(record) == set(StudyRecord.__annotations__) - {"proxy_outcome", "reported"}  # reported runs' own
    assert (record["vision"], record["language"], record["log_agop"], record["cka"]) == ("timm:a", "hf:b", 6.2, 0.3)
    assert record["metrics_version"] == result["metrics_version"]
    unreadable = record_of("timm:a", "hf:b", {"not": "a result"})
    assert unreadable == {"vision": "timm:a", "language": "hf:b", "metrics_version": None, "stratum": None}


def test_the_shipped_evidence_keeps_every_key_of_a_record() -> None:
    from phasecore.study.evidence import evidence_record

    record = record_of("timm:a", "hf:b", full_result(metrics={"log_agop": 6.2}))
    kept = evidence_record(record)
    assert set(kept) == set(StudyRecord.__annotations__) - {"proxy_outcome", "reported"}
    assert all(kept[key] == record[key] for key in ("vision", "log_agop", "alignment_score", "stratum"))
