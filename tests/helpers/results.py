"""Complete, schema-valid screening results for planted tests (gate, report, batches): the figures a test cares
about are given, every other required field gets a neutral value, so the typed readers see a real result. And
planted batch documents built from them (the report and the evidence page)."""

from __future__ import annotations

import copy
from typing import Any

from phasecore import ENGINE_VERSION, METRICS_VERSION
from phasecore.screening.paper_rules import PAPER
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings

_NULL = {"observed": 0.0, "mean": 0.0, "std": 0.0, "p95": 0.0, "z": None, "p_value": 1.0, "permutations": 20}
_METRICS: dict[str, Any] = {
    "s_ntk_cross": 0.9,
    "s_ntk_cross_centered": 0.2,
    "s_ntk_cross_null": _NULL,
    "s_ntk_cross_centered_null": _NULL,
    "s_ntk_vision": 0.95,
    "s_ntk_language": 0.95,
    "phase_vision": "lazy",
    "phase_language": "lazy",
    "agop_ratio_vision": 10.0,
    "agop_ratio_language": 10.0,
    "delta_ntk": 0.0,
    "log_agop": 1.0,
    "combined": 0.0,
    "cka": 0.2,
    "mutual_knn": 0.1,
}
_RULE = {"value": None, "threshold": 1.0, "predicts_failure": None, "claimed_accuracy": None, "source": PAPER["title"]}


#: the keys every stored or printed result has at least
RESULT_KEYS = frozenset(
    {"vision", "language", "dataset", "settings", "metrics", "ground_truth", "predictions", "timings", "engine_version"}
)


def full_result(
    *,
    metrics: dict[str, Any] | None = None,
    predictions: dict[str, dict[str, Any]] | None = None,
    ground_truth: dict[str, Any] | None = None,
    dataset: str = "digits",
    settings: EngineSettings | None = None,
) -> dict[str, Any]:
    """A result dict that ``ScreeningResult`` accepts, with ``metrics``, ``predictions`` (per rule, merged onto a
    neutral rule) and ``ground_truth`` (merged onto a neutral one; None: ground truth off) given."""
    settings = settings or EngineSettings(n=20)
    gt = None
    if ground_truth is not None:
        gt = {"method": "ridge", "n": 20, "n_classes": 10, "alignment_score": 0.0, "failed": None, **ground_truth}
    result = {
        "vision": {"identity": {"ref": "timm:test_vit?weights=random"}, "profile_key": "v", "kernel": {}},
        "language": {"identity": {"ref": "pkg:all-minilm-l6-v2"}, "profile_key": "l", "kernel": {}},
        "dataset": {"ref": dataset},
        "settings": settings.model_dump(mode="json"),
        "metrics": {**copy.deepcopy(_METRICS), **(metrics or {})},
        "ground_truth": gt,
        "predictions": {rule: {**_RULE, **values} for rule, values in (predictions or {}).items()},
        "paper": PAPER,
        "timings": {},
        "engine_version": ENGINE_VERSION,
        "metrics_version": METRICS_VERSION,
        "stratum": settings.stratum(dataset),
    }
    return ScreeningResult.model_validate(result).model_dump(mode="json")


def planted_pairs(
    vision: int = 5,
    language: int = 5,
    *,
    settings: EngineSettings | None = None,
    dataset: str = "digits",
    seed: int = 0,
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(vision ref, language ref, result)`` of a vision × language grid of decided pairs in one stratum
    (``settings`` on ``dataset``): every third pair failed, the others aligned; ΔNTK follows the outcome
    noisily (so the NTK-difference rule is informative), the other features are noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(vision):
        for j in range(language):
            failed = (i + j) % 3 == 0
            delta = float(np.clip((0.75 if failed else 0.25) + rng.normal(0, 0.2), 0.0, 1.0))
            log_agop = float(rng.uniform(2, 9))
            result = full_result(
                settings=settings,
                dataset=dataset,
                metrics={
                    "delta_ntk": delta,
                    "s_ntk_cross": float(rng.uniform(0, 1)),
                    "s_ntk_cross_centered": float(rng.uniform(0, 1)),
                    "log_agop": log_agop,
                    "combined": delta * log_agop,
                    "cka": float(rng.uniform(0, 1)),
                    "mutual_knn": float(rng.uniform(0, 1)),
                },
                predictions={
                    "ntk_difference_rule": {"value": delta, "threshold": 0.5, "predicts_failure": delta > 0.5},
                    "combined_rule": {"value": delta * log_agop, "threshold": 2.5, "predicts_failure": True},
                },
                ground_truth={
                    "outcome": "failed" if failed else "aligned",
                    "failed": failed,
                    "alignment_score": -0.2 if failed else 0.4,
                },
            )
            pairs.append((f"timm:planted_v{i}", f"hf:org/planted-l{j}", result))
    return pairs


def planted_document() -> dict:
    """3 vision × 2 language models; pair (0, 0) failed to compute. Measured failure: vision model 2.
    The combined rule says failure for vision 2 and for (1, 1): 4 right of 5. The AGOP rule always says failure:
    2 of 5. The ΔNTK rule is undetermined everywhere."""
    vision = ["timm:test_vit?weights=random", "timm:resnet50", "pkg:efficientnet-lite0"]
    language = ["pkg:all-minilm-l6-v2", "hf:bert-base-uncased"]
    phases = ["chaotic", "optimal", "lazy"]
    pairs = []
    for i, v in enumerate(vision):
        for j, lang in enumerate(language):
            entry = {"vision": v, "language": lang, "vision_index": i, "language_index": j, "screening_id": None}
            if (i, j) == (0, 0):
                pairs.append({**entry, "state": "failed", "result": None, "problem": {"title": "x", "detail": "boom"}})
                continue
            failed = i == 2
            verdicts = {
                "agop_rule": True,
                "combined_rule": failed or (i, j) == (1, 1),
                "ntk_difference_rule": None,
                "cross_phase_rule": not failed,
            }
            metrics = {
                "s_ntk_cross": 0.99,
                "s_ntk_cross_centered": 0.1 * (i + 1) + 0.01 * j,
                "s_ntk_vision": 0.3 + 0.3 * i,
                "s_ntk_language": 0.95,
                "phase_vision": phases[i],
                "phase_language": "lazy",
                "agop_ratio_vision": 10.0 ** (3 + i),
                "agop_ratio_language": 10.0 ** (4 + j),
                "agop_vision": {"decay": 1.0 + i, "log10_ratio": 3.0 + i},
                "agop_language": {"decay": 0.5 + j, "log10_ratio": 4.0 + j},
                "cka": 0.2,
                "mutual_knn": 0.1,
            }
            result = full_result(
                metrics=metrics,
                ground_truth={
                    "alignment_score": -0.05 if failed else 0.2 + 0.1 * j,
                    "failed": failed,
                    "outcome": "failed" if failed else "aligned",
                },
                predictions={
                    rule: {"predicts_failure": verdict, "claimed_accuracy": 0.96 if rule == "combined_rule" else None}
                    for rule, verdict in verdicts.items()
                },
            )
            pairs.append({**entry, "state": "succeeded", "result": result, "problem": None})
    return {
        "format": "phasescreen-batch/1",
        "id": None,
        "name": "planted",
        "dataset": "digits",
        "options": {"n": 20, "failure_threshold": 0.03},
        "vision": vision,
        "language": language,
        "state": "partial",
        "created_at": None,
        "pairs": pairs,
    }


def blend_document() -> dict:
    """efficientnet-lite0 at t = 0, 0.5, 1 × MiniLM at t = 0 and 1; the planted AGOP ratio and score fall with t."""
    vision = ["pkg:efficientnet-lite0", "pkg:efficientnet-lite0?blend=0.5", "pkg:efficientnet-lite0?blend=1&seed=3"]
    language = ["pkg:all-minilm-l6-v2", "pkg:all-minilm-l6-v2?weights=random"]
    pairs = []
    for i, v in enumerate(vision):
        for j, lang in enumerate(language):
            metrics = {"agop_ratio_vision": 10.0 ** (6 - 2 * i), "agop_ratio_language": 10.0 ** (4 + j),
                       "agop_vision": {"censored": i == 1}}  # fmt: skip
            result = full_result(metrics=metrics, ground_truth={"alignment_score": 0.5 - 0.2 * i - 0.3 * j})
            pairs.append({"vision": v, "language": lang, "vision_index": i, "language_index": j,
                          "state": "succeeded", "result": result, "problem": None})  # fmt: skip
    return {**planted_document(), "name": "blends", "vision": vision, "language": language, "pairs": pairs}
