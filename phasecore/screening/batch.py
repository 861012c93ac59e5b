"""Batches: every (vision, language) pair of a grid, each model's profile computed once and shared.

A grid file (YAML; ``grids/offline.yaml``, ``grids/paper-144.yaml``)::

    name: offline                    # optional
    dataset: digits
    options: {n: 100}                # EngineSettings fields (docs/metrics.md); defaults otherwise
    vision: [pkg:efficientnet-lite0, timm:test_vit?weights=random]
    language: [pkg:all-minilm-l6-v2]

A V × L grid costs V + L profiles and V · L pair steps (METRICS §1–§7 per profile, §2, §5–§7 per pair).

The *batch document* is the one shape of a batch's results: ``phasescreen batch`` writes it, the service
serves it at ``GET /v1/batches/{id}/results.json``, and ``phasescreen report`` reads it::

    {"format": "phasescreen-batch/1", "id": str | None, "name": str | None, "dataset": str,
     "options": {...}, "vision": [ref, ...], "language": [ref, ...], "state": str, "created_at": str | None,
     "pairs": [{"vision", "language", "vision_index", "language_index", "state", "screening_id",
                "result" (the screening result JSON, or None), "problem" ({title, detail, ...} or None)}]}

``state`` of a batch: ``queued`` / ``running`` while pairs remain, then ``succeeded`` (every pair),
``failed`` (no pair) or ``partial`` (some pairs succeeded).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasecore.errors import InvalidReference, InvalidSettings
from phasecore.references.refs import ModelRef
from phasecore.screening.result import ScreeningResult
from phasecore.settings import EngineSettings

FORMAT = "phasescreen-batch/1"
RULES = ("agop_rule", "combined_rule", "ntk_difference_rule", "cross_phase_rule")

#: columns of ``results.csv``, one row per pair
CSV_FIELDS: tuple[str, ...] = (
    "vision",
    "language",
    "vision_index",
    "language_index",
    "state",
    "screening_id",
    "s_ntk_cross",
    "s_ntk_cross_p_value",
    "s_ntk_cross_centered",
    "s_ntk_cross_centered_p_value",
    "s_ntk_vision",
    "s_ntk_language",
    "phase_vision",
    "phase_language",
    "agop_ratio_vision",
    "agop_ratio_language",
    "agop_decay_vision",
    "agop_decay_language",
    "delta_ntk",
    "log_agop",
    "combined",
    "cka",
    "mutual_knn",
    "seen_accuracy",
    "unseen_accuracy",
    "alignment_score",
    "failed",
    *RULES,
    "problem",
    "metrics_version",
    "s_ntk_cross_unbiased",
    "s_ntk_cross_centered_within_class_p_value",
    "agop_censored_vision",
    "agop_censored_language",
    "agop_unstable_vision",
    "agop_unstable_language",
    "agop_condition_vision",
    "agop_condition_language",
    "outcome",
    "p_above",
    "p_below",
    "n_groups",
)


@dataclass(frozen=True)
class Grid:
    """The models and data of a batch; references are canonical (``ModelRef.canonical``) and unique."""

    vision: tuple[str, ...]
    language: tuple[str, ...]
    dataset: str
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    @classmethod
    def from_mapping(cls, data: Any, *, origin: str = "grid") -> Grid:
        """Validate a parsed grid; raises InvalidSettings / InvalidReference naming what to change."""
        if not isinstance(data, Mapping):
            raise InvalidSettings(f"{origin}: expected a mapping with vision, language and dataset")
        unknown = set(data) - {"name", "dataset", "options", "vision", "language", "description"}
        if unknown:
            raise InvalidSettings(
                f"{origin}: unknown keys {sorted(unknown)}; expected name, dataset, options, vision, language"
            )
        lists = {role: _references(data.get(role), role, origin) for role in ("vision", "language")}
        dataset = data.get("dataset", "digits")
        if not isinstance(dataset, str) or not dataset.strip():
            raise InvalidSettings(f"{origin}: dataset must be a dataset reference such as digits")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise InvalidSettings(f"{origin}: options must be a mapping of engine settings")
        name = data.get("name")
        return cls(
            lists["vision"], lists["language"], dataset.strip(), dict(options), None if name is None else str(name)
        )

    def settings(self, overrides: Mapping[str, Any] | None = None) -> EngineSettings:
        """The engine settings of every pair: the grid's options, then ``overrides``."""
        from pydantic import ValidationError

        try:
            return EngineSettings.model_validate({**self.options, **(overrides or {})})
        except ValidationError as exc:
            raise InvalidSettings(f"invalid options: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc

    @property
    def n_pairs(self) -> int:
        return len(self.vision) * len(self.language)


def _references(value: Any, role: str, origin: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidSettings(f"{origin}: {role} must be a non-empty list of model references")
    canonical = []
    for item in value:
        if not isinstance(item, str):
            raise InvalidReference(f"{origin}: {role} entry {item!r} is not a model reference string")
        canonical.append(ModelRef.parse(item).canonical())
    duplicates = sorted({ref for ref in canonical if canonical.count(ref) > 1})
    if duplicates:
        raise InvalidSettings(f"{origin}: {role} lists {', '.join(duplicates)} more than once")
    return tuple(canonical)


def shipped_grids_dir() -> Path:
    """The grids that ship with phasescreen: ``phasecore/grids`` in an installed distribution, the checkout's
    top-level ``grids/`` otherwise (pyproject maps one onto the other)."""
    here = Path(__file__).resolve().parents[1]  # phasecore/
    packaged = here / "grids"
    return packaged if packaged.is_dir() else here.parent / "grids"


def load_grid(path: str | Path) -> Grid:
    """Read a grid YAML file (see the module docstring).

    A ``path`` that does not exist but names a shipped grid (``offline``, ``offline.yaml`` or
    ``grids/offline.yaml``) reads that one, so the shipped grids work from an installed package too.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        shipped = shipped_grids_dir() / (path.name if path.suffix else f"{path.name}.yaml")
        path = shipped if shipped.is_file() else path
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidSettings(f"grid file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise InvalidSettings(f"grid file {path} is not valid YAML: {exc}") from exc
    return Grid.from_mapping(data, origin=str(path))


PairCallback = Callable[[dict[str, Any]], None]


def batch_document(
    grid: Grid,
    settings: EngineSettings,
    pairs: Iterable[Mapping[str, Any]],
    *,
    batch_id: str | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The batch document of ``pairs`` (entries as in the module docstring)."""
    pairs = [dict(p) for p in pairs]
    return {
        "format": FORMAT,
        "id": batch_id,
        "name": grid.name,
        "dataset": grid.dataset,
        "options": settings.model_dump(mode="json"),
        "vision": list(grid.vision),
        "language": list(grid.language),
        "state": batch_state(p["state"] for p in pairs),
        "created_at": created_at,
        "pairs": pairs,
    }


def batch_state(states: Iterable[str]) -> str:
    """queued | running | succeeded | failed | partial, from the states of the pairs."""
    states = list(states)
    if not states or all(s == "queued" for s in states):
        return "queued"
    if any(s in ("queued", "running") for s in states):
        return "running"
    succeeded = sum(s == "succeeded" for s in states)
    return "succeeded" if succeeded == len(states) else ("failed" if succeeded == 0 else "partial")


def check_document(document: Any, *, origin: str = "batch document") -> dict[str, Any]:
    """Raise InvalidSettings unless ``document`` looks like a batch document; return it."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise InvalidSettings(f"{origin} is not a phasescreen batch document (format {FORMAT!r})")
    for key in ("vision", "language", "pairs"):
        if not isinstance(document.get(key), list):
            raise InvalidSettings(f"{origin}: {key!r} is missing or not a list")
    return dict(document)


def pair_row(pair: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row (``CSV_FIELDS``) of a pair entry; figures are None where the pair has no result."""
    result = as_result(pair.get("result"))
    problem = pair.get("problem") or {}
    row: dict[str, Any] = {
        "vision": pair["vision"],
        "language": pair["language"],
        "vision_index": pair.get("vision_index"),
        "language_index": pair.get("language_index"),
        "state": pair.get("state"),
        "screening_id": pair.get("screening_id"),
        "problem": problem.get("detail"),
    }
    if result is None:
        return {name: row.get(name) for name in CSV_FIELDS}
    m, gt = result.metrics, result.ground_truth
    within = m.s_ntk_cross_centered_within_class_null
    row.update(
        metrics_version=result.metrics_version,
        s_ntk_cross=m.s_ntk_cross,
        s_ntk_cross_p_value=m.s_ntk_cross_null.p_value,
        s_ntk_cross_centered=m.s_ntk_cross_centered,
        s_ntk_cross_centered_p_value=m.s_ntk_cross_centered_null.p_value,
        s_ntk_cross_unbiased=m.s_ntk_cross_unbiased,
        s_ntk_cross_centered_within_class_p_value=None if within is None else within.p_value,
        s_ntk_vision=m.s_ntk_vision,
        s_ntk_language=m.s_ntk_language,
        phase_vision=m.phase_vision,
        phase_language=m.phase_language,
        agop_ratio_vision=m.agop_ratio_vision,
        agop_ratio_language=m.agop_ratio_language,
        agop_condition_vision=m.agop_condition_vision,
        agop_condition_language=m.agop_condition_language,
        delta_ntk=m.delta_ntk,
        log_agop=m.log_agop,
        combined=m.combined,
        cka=m.cka,
        mutual_knn=m.mutual_knn,
    )
    for modality, agop in (("vision", m.agop_vision), ("language", m.agop_language)):
        if agop is not None:
            row[f"agop_decay_{modality}"] = agop.decay
            row[f"agop_censored_{modality}"] = agop.censored
            row[f"agop_unstable_{modality}"] = agop.unstable
    if gt is not None:
        row.update(
            seen_accuracy=gt.seen_accuracy,
            unseen_accuracy=gt.unseen_accuracy,
            alignment_score=gt.alignment_score,
            failed=gt.failed,
            outcome=gt.outcome,
            p_above=gt.p_above,
            p_below=gt.p_below,
            n_groups=gt.n_groups,
        )
    for rule in RULES:
        prediction = result.predictions.get(rule)
        row[rule] = None if prediction is None else prediction.predicts_failure
    return {name: row.get(name) for name in CSV_FIELDS}


def as_result(result: ScreeningResult | Mapping[str, Any] | None) -> ScreeningResult | None:
    """A stored result (JSON) as the typed model; None stays None."""
    if result is None or isinstance(result, ScreeningResult):
        return result
    return ScreeningResult.model_validate(result)


def rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [pair_row(p) for p in document["pairs"]]


def to_csv(document: Mapping[str, Any]) -> str:
    """``results.csv``: a header of ``CSV_FIELDS`` and one row per pair; empty cells where undetermined."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows(document):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def summary_table(document: Mapping[str, Any]) -> str:
    """A plain-text table, one line per pair, and a line of totals (the end of ``phasescreen batch``)."""
    header = ("vision", "language", "state", "S_cross_c", "CKA", "align", "failed", "combined", "AGOP")
    table = [header]
    for row in rows(document):
        table.append(
            (
                row["vision"],
                row["language"],
                row["state"],
                _cell(row["s_ntk_cross_centered"], ".4f"),
                _cell(row["cka"], ".3f"),
                _cell(row["alignment_score"], ".3f"),
                _cell(row["failed"], ""),
                _cell(row["combined_rule"], ""),
                _cell(row["agop_rule"], ""),
            )
        )
    widths = [max(len(str(line[k])) for line in table) for k in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(totals_line(document))
    return "\n".join(lines)


def totals_line(document: Mapping[str, Any]) -> str:
    all_rows = rows(document)
    done = [r for r in all_rows if r["state"] == "succeeded"]
    labelled = [r for r in done if r["failed"] is not None and r["combined_rule"] is not None]
    agree = sum(r["failed"] == r["combined_rule"] for r in labelled)
    text = f"{len(done)} of {len(all_rows)} pairs screened ({document.get('state')})"
    if labelled:
        text += (
            f"; measured failures {sum(bool(r['failed']) for r in labelled)} of {len(labelled)}; "
            f"the combined rule agrees with the measured outcome on {agree} of {len(labelled)}"
        )
    return text
