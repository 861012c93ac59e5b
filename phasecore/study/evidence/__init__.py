"""Shipped evidence: the study of the project's evidence run, shipped with the package (docs/evidence.md).

A fresh install has no decided pairs of its own, so ``predictions.<rule>.measured`` would only ever say
"insufficient". The evidence run (``make evidence``) screens a grid into a local store and writes its study to
``phasecore/study/evidence/shipped.json`` with ``write_evidence``; a result in one of that file's strata then shows the
shipped figures, labelled as such (``source: "shipped evidence"``, with the file's date, commit and command),
until the deployment's own decided pairs in that stratum reach ``MIN_LABELLED`` (20); from then on the
deployment's own figures (``source: "deployment"``). The two sources are never mixed: every count and figure of
one ``measured`` comes from one of them. A result in a stratum the file does not cover is told which strata it
does cover. No file (or ``$PHASESCREEN_EVIDENCE_PATH`` naming a missing one): no shipped evidence, and the
``measured`` reasons and the study say so.

File format (JSON, written only by ``write_evidence``, never by hand)::

    {
      "kind": "phasescreen-evidence",
      "format": 1,                      # of this layout
      "metrics_version": 2,             # METRICS version of every record and figure
      "created_at": "2025-01-01T00:00:00+00:00",
      "commit": "0d44cdd…" | null,      # git commit of the code that ran (suffix "-dirty": uncommitted changes)
      "command": "make evidence",       # what produced it
      "settings": {...},                # what the run used (grid: dataset, options, models), free-form
      "study": {...},                   # phasecore.study.strata.study_by_stratum(records)
      "records": [...]                  # the per-pair study records (``evidence_record``), to recompute the study
    }

``verify_evidence`` recomputes the study from the records and lists every figure that differs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phasecore import METRICS_VERSION
from phasecore.study.pair_record import StudyRecord
from phasecore.study.quality import RULES
from phasecore.study.strata import measured_rules, stratum_measured, study_by_stratum

log = logging.getLogger(__name__)

EVIDENCE_KIND = "phasescreen-evidence"
EVIDENCE_FORMAT = 1
#: where the package ships its evidence file
DEFAULT_EVIDENCE_PATH = Path(__file__).parent / "shipped.json"
#: the environment variable that points the loader at another file (tests; a deployment's own evidence)
EVIDENCE_PATH_ENV = "PHASESCREEN_EVIDENCE_PATH"
#: the deployment's own decided pairs in a stratum from which its own figures replace the shipped ones
MIN_LABELLED = 20
SOURCE_DEPLOYMENT = "deployment"
SOURCE_SHIPPED = "shipped evidence"



class EvidenceError(ValueError):
    """An evidence file that cannot be used: not JSON, not of this kind, format or METRICS version."""


@dataclass(frozen=True)
class ShippedEvidence:
    """A loaded evidence file: its metadata, its study and the strata it covers."""

    created_at: str
    commit: str | None
    command: str | None
    settings: dict[str, Any]
    study: dict[str, Any]
    n_records: int
    by_key: dict[str, dict[str, Any]] = field(repr=False)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ShippedEvidence:
        validate_evidence(document)
        study = dict(document["study"])
        return cls(
            created_at=str(document["created_at"]),
            commit=document.get("commit"),
            command=document.get("command"),
            settings=dict(document.get("settings") or {}),
            study=study,
            n_records=len(document.get("records") or []),
            by_key={str(entry["stratum"]["key"]): entry for entry in study["strata"]},
        )

    def label(self) -> dict[str, Any]:
        """What a ``measured`` of this source carries to say where its figures come from."""
        return {"created_at": self.created_at, "commit": self.commit, "command": self.command}

    def strata(self) -> list[dict[str, Any]]:
        """The strata the evidence covers, each as ``{key, dataset, metrics_version, options, n_labelled,
        status}``; ``options`` are the stratum's settings that differ from the engine's defaults (what a request
        passes to land in it)."""
        return [describe_stratum(entry) for entry in self.study["strata"]]


def evidence_path() -> Path:
    """``$PHASESCREEN_EVIDENCE_PATH`` when set (and not empty), else the package's file."""
    env = os.environ.get(EVIDENCE_PATH_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_EVIDENCE_PATH


def evidence_record(record: Mapping[str, Any]) -> StudyRecord:
    """The part of a study record (``store.records.study_records``) that the study reads: model references,
    metrics version, stratum, outcome, ``failed``, ``alignment_score`` and its ``group_scores`` (classes and s_g),
    ``FEATURES`` and ``COMPARATORS``, and each rule's value and verdict."""
    predictions = record.get("predictions") or {}
    get = record.get
    return StudyRecord(
        vision=record["vision"],
        language=record["language"],
        metrics_version=get("metrics_version"),
        stratum=get("stratum"),
        outcome=get("outcome"),
        failed=get("failed"),
        alignment_score=get("alignment_score"),
        s_ntk_cross=get("s_ntk_cross"),
        s_ntk_cross_centered=get("s_ntk_cross_centered"),
        delta_ntk=get("delta_ntk"),
        log_agop=get("log_agop"),
        cka=get("cka"),
        mutual_knn=get("mutual_knn"),
        s_ntk_cross_unbiased=get("s_ntk_cross_unbiased"),
        group_scores=[{"classes": g.get("classes"), "s_g": g.get("s_g")} for g in get("group_scores") or []],
        predictions={
            rule: {
                "value": (predictions.get(rule) or {}).get("value"),
                "predicts_failure": (predictions.get(rule) or {}).get("predicts_failure"),
            }
            for rule in RULES
            if isinstance(predictions.get(rule), Mapping)
        },
    )


def build_evidence(
    records: Sequence[Mapping[str, Any]],
    *,
    command: str,
    settings: Mapping[str, Any] | None = None,
    commit: str | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The evidence document of ``records`` (study records, e.g. ``store.records.study_records``): their study by
    stratum (``study_by_stratum``, ``MIN_LABELLED``) and the records it was computed from."""
    kept = [evidence_record(record) for record in records]
    return {
        "kind": EVIDENCE_KIND,
        "format": EVIDENCE_FORMAT,
        "metrics_version": METRICS_VERSION,
        "created_at": (created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "commit": commit,
        "command": command,
        "settings": dict(settings or {}),
        "study": study_by_stratum(kept, min_labelled=MIN_LABELLED),
        "records": kept,
    }


def write_evidence(path: Path, records: Sequence[Mapping[str, Any]], **metadata: Any) -> dict[str, Any]:
    """Write ``build_evidence(records, **metadata)`` to ``path`` (atomically: a reader never sees half a file)
    and return it. Raises ValueError when a figure or record is not finite JSON."""
    document = build_evidence(records, **metadata)
    text = json.dumps(document, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return document


def validate_evidence(document: Any) -> None:
    """Raise EvidenceError unless ``document`` is an evidence document this code reads."""
    if not isinstance(document, Mapping) or document.get("kind") != EVIDENCE_KIND:
        raise EvidenceError(f"not a phasescreen evidence file (kind is not {EVIDENCE_KIND!r})")
    if document.get("format") != EVIDENCE_FORMAT:
        raise EvidenceError(f"evidence format {document.get('format')!r}; this version reads {EVIDENCE_FORMAT}")
    if document.get("metrics_version") != METRICS_VERSION:
        raise EvidenceError(
            f"evidence of METRICS version {document.get('metrics_version')!r}; results here are of version "
            f"{METRICS_VERSION} and figures of another version are never used"
        )
    study = document.get("study")
    if not isinstance(study, Mapping) or not isinstance(study.get("strata"), list):
        raise EvidenceError("the evidence file has no study by stratum")
    for entry in study["strata"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("stratum"), Mapping):
            raise EvidenceError("a stratum of the evidence study has no description")
    if not isinstance(document.get("created_at"), str) or not isinstance(document.get("records"), list):
        raise EvidenceError("the evidence file lacks created_at or records")


def read_evidence(path: Path) -> dict[str, Any]:
    """The evidence document at ``path``; EvidenceError when it cannot be read or used."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvidenceError(f"cannot read evidence file {path.name}: {exc}") from exc
    validate_evidence(document)
    return dict(document)


def verify_evidence(document: Mapping[str, Any], *, rel_tol: float = 1e-9) -> list[str]:
    """Recompute the study from the document's records and list every figure that differs from the stored
    study (a path and both values each); empty when they agree (floats within ``rel_tol``)."""
    validate_evidence(document)
    recomputed = study_by_stratum(document["records"], min_labelled=MIN_LABELLED)
    differences: list[str] = []
    _compare(json.loads(json.dumps(recomputed)), document["study"], "study", rel_tol, differences)
    return differences


_CACHE: dict[tuple[str, int, int], ShippedEvidence] = {}
_CACHE_LOCK = threading.Lock()
_WARNED: set[tuple[str, int, int]] = set()


def shipped_evidence(path: Path | None = None) -> ShippedEvidence | None:
    """The shipped evidence (``evidence_path()`` unless ``path``), read once per file version; None when there
    is no file. A file that cannot be used is logged (once) and treated as absent: results never show figures
    from a file this code does not read."""
    path = path or evidence_path()
    try:
        stat = path.stat()
    except OSError:
        return None
    version = (str(path), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(version)
    if cached is not None:
        return cached
    try:
        evidence = ShippedEvidence.from_document(read_evidence(path))
    except EvidenceError as exc:
        if version not in _WARNED:
            _WARNED.add(version)
            log.warning("shipped evidence not used: %s", exc)
        return None
    with _CACHE_LOCK:
        _CACHE.clear()  # one file version at a time
        _CACHE[version] = evidence
    return evidence


def describe_stratum(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A study stratum in a few words: key, dataset, metrics version, the options that differ from the engine's
    defaults, its decided pairs and status."""
    stratum = entry["stratum"]
    return {
        "key": str(stratum.get("key")),
        "dataset": stratum.get("dataset"),
        "metrics_version": stratum.get("metrics_version"),
        "options": non_default_options(stratum.get("settings") or {}),
        "n_labelled": entry.get("n"),
        "status": entry.get("status"),
    }


def non_default_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a stratum's settings that differ from ``EngineSettings()``'s (all of them when a name is
    unknown to this engine)."""
    from phasecore.settings import EngineSettings

    defaults = EngineSettings().model_dump(mode="json")
    return {name: value for name, value in settings.items() if name not in defaults or defaults[name] != value}


def evidence_summary(
    evidence: ShippedEvidence | None, *, dataset: str | None = None, stratum: str | None = None
) -> dict[str, Any] | None:
    """The shipped evidence as ``GET /v1/study`` shows it beside the deployment's own figures: ``{source,
    created_at, commit, command, settings, metrics_version, n_records, excluded_version_1, excluded_no_stratum,
    strata}`` with ``strata`` in the study's form, filtered like the deployment's (``dataset``, ``stratum``
    key); None without shipped evidence."""
    if evidence is None:
        return None
    strata = [
        entry
        for entry in evidence.study["strata"]
        if (not dataset or entry["stratum"].get("dataset") == dataset.strip())
        and (not stratum or entry["stratum"].get("key") == stratum.strip())
    ]
    return {
        "source": SOURCE_SHIPPED,
        **evidence.label(),
        "settings": evidence.settings,
        "metrics_version": METRICS_VERSION,
        "n_records": evidence.n_records,
        "excluded_version_1": evidence.study.get("excluded_version_1", 0),
        "excluded_no_stratum": evidence.study.get("excluded_no_stratum", 0),
        "strata": strata,
    }


def lookup_measured(
    result: Mapping[str, Any], own_study: Mapping[str, Any], evidence: ShippedEvidence | None
) -> dict[str, dict[str, Any]]:
    """Each rule's ``measured`` for ``result``, from one source only.

    - The deployment's own decided pairs in the result's stratum (``own_study``, a ``study_by_stratum`` study
      of the stored pairs the result may draw on) number ``MIN_LABELLED`` or more: its own figures,
      ``source: "deployment"``.
    - Else, when the shipped evidence covers the stratum: the shipped figures, ``source: "shipped evidence"``,
      with ``evidence`` ({created_at, commit, command}) and ``deployment_n_labelled`` (the deployment's own
      decided pairs there, counted in none of these figures).
    - Else the deployment's own (insufficient) figures with the reason, which names the strata the shipped
      evidence covers (``shipped_evidence_strata``; null, and the reason says so, without shipped evidence).

    Every ``measured`` carries ``source``, ``evidence``, ``deployment_n_labelled`` and
    ``shipped_evidence_strata`` (null where they do not apply).
    """
    return {rule: {**_LABELS, **measured} for rule, measured in _lookup(result, own_study, evidence).items()}


#: the keys every ``measured`` carries (null where they do not apply), so a stored result and its typed form agree
_LABELS: dict[str, Any] = {"evidence": None, "deployment_n_labelled": None, "shipped_evidence_strata": None}


def _lookup(
    result: Mapping[str, Any], own_study: Mapping[str, Any], evidence: ShippedEvidence | None
) -> dict[str, dict[str, Any]]:
    own = stratum_measured(result, own_study)
    own_n = int(next(iter(own.values()))["n_labelled"]) if own else 0
    if own_n >= MIN_LABELLED:
        return own
    stratum = result.get("stratum")
    key = stratum.get("key") if isinstance(stratum, Mapping) else None
    entry = evidence.by_key.get(str(key)) if evidence is not None and key else None
    if evidence is not None and entry is not None and result.get("metrics_version") == METRICS_VERSION:
        shipped = measured_rules(entry, source=SOURCE_SHIPPED)
        if entry.get("status") != "ok":
            why = f"the shipped evidence holds {entry.get('n')} decided pairs in this stratum: {entry.get('reason')}"
            shipped = {rule: {**measured, "reason": why} for rule, measured in shipped.items()}
        return {
            rule: {**measured, "evidence": evidence.label(), "deployment_n_labelled": own_n}
            for rule, measured in shipped.items()
        }
    if evidence is None:
        note = " No shipped evidence is installed."
        covered: list[dict[str, Any]] | None = None
    else:
        covered = evidence.strata()
        note = (
            f" The shipped evidence ({evidence.created_at}) covers "
            + ("no stratum." if not covered else "; ".join(_stratum_words(s) for s in covered) + ".")
        )
    return {
        rule: {
            **measured,
            "reason": f"{_sentence(measured['reason'])}{note}".strip(),
            "shipped_evidence_strata": covered,
        }
        for rule, measured in own.items()
    }


def attach_measured_with_evidence(
    result: Mapping[str, Any], own_study: Mapping[str, Any], evidence: ShippedEvidence | None
) -> dict[str, Any]:
    """A copy of ``result`` whose ``predictions[rule]["measured"]`` is ``lookup_measured``'s."""
    measured = lookup_measured(result, own_study, evidence)
    predictions = {
        rule: {**prediction, "measured": measured.get(rule)}
        for rule, prediction in (result.get("predictions") or {}).items()
    }
    return {**result, "predictions": predictions}


def _stratum_words(described: Mapping[str, Any]) -> str:
    options = ", ".join(f"{name}={value}" for name, value in sorted(described["options"].items()))
    return (
        f"stratum {described['key'][:12]} (dataset {described['dataset']}, options {options or 'the defaults'}; "
        f"{described['n_labelled']} decided pairs)"
    )


def _compare(new: Any, old: Any, where: str, rel_tol: float, out: list[str]) -> None:
    if isinstance(new, Mapping) and isinstance(old, Mapping):
        for key in sorted(set(new) | set(old), key=str):
            _compare(new.get(key), old.get(key), f"{where}.{key}", rel_tol, out)
    elif isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _compare(a, b, f"{where}[{i}]", rel_tol, out)
    elif (
        isinstance(new, float | int)
        and isinstance(old, float | int)
        and not isinstance(new, bool)
        and not isinstance(old, bool)
    ):
        if not math.isclose(float(new), float(old), rel_tol=rel_tol, abs_tol=1e-12):
            out.append(f"{where}: recomputed {new!r}, stored {old!r}")
    elif new != old:
        out.append(f"{where}: recomputed {new!r}, stored {old!r}")


def _sentence(text: str | None) -> str:
    """``text`` ending as a sentence does, so that another can follow it."""
    text = (text or "").rstrip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."
