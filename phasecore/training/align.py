"""Alignment training of a vision–language pair (issue 22), scored on held-out values (METRICS §7).

Two encoders (any the registry loads; the experiment uses zoo towers), a linear projection head each to a shared
``head_dim``-dimensional space, and the symmetric InfoNCE loss on paired samples of the training classes. What
trains (``train``): ``heads`` (LiT-style: both towers frozen), ``last:K`` (the heads and each tower's last K
blocks, METRICS §0's ``params=last:K``) or ``all``. A method of Table 2 (``phasecore.training.methods``) sets the
towers' learning rates.

Definitions (every choice is in docs/phase-aware.md with its reason):

- **Standardised outputs.** Before its head, each tower's output is standardised per feature by fixed statistics
  of the starting tower's outputs on (up to 1,024 of) the fold's training pairs, as ``groundtruth.contrastive``
  does for frozen towers, so that one learning rate suits towers of any output scale. The heads (seeded), then
  L2-normalisation; the loss is ``contrastive.symmetric_info_nce`` at the fixed temperature ``TEMPERATURE``.
- **Optimiser.** Adam at a constant η0 (``lr``) for the heads; a tower's parameters at ``η0 · rate(side)`` of the
  method; the global gradient norm clipped at ``clip``. Towers run in eval mode (no dropout; GroupNorm/LayerNorm
  only in the zoo). Batches: epochs of seeded permutations of the fold's training pairs.
- **Held-out values, in folds.** The evaluation sample's §7 groups (``shapes``: value-disjoint colour and shape
  groups, ``PairedDataset.outcome_groups``; other datasets: §7's seeded class pairs) are dealt into ``folds``
  folds, the kinds interleaved (``value_folds``). Fold f trains on the training pairs whose class is neither one of
  its groups' classes nor in their ``exclude`` lists, i.e. holds none of the values its groups hold out, and its
  groups are scored with fold f's towers and heads. Every fold starts from the same two towers; the F trainings run
  in lockstep, so each checkpoint has all G group scores. **Examples seen** counts one fold's training (steps ×
  batch): the folds are F replicas on different training classes, not more data.
- **Score (§7).** At a checkpoint, each group's held-out images are classified among the group's classes against
  prototypes made of the class caption templates through the language tower and its head
  (``contrastive.classify_by_prototypes``); ``outcome_test.group_score`` gives s_g, ``alignment_score = mean_g
  s_g``, and ``decide_outcome`` the three-way outcome at τ = ``failure_threshold`` and α = ``outcome_alpha``.
- **Checkpoints** (``checkpoint_grid``): step 0 (heads at their initialisation) and ``round(2^(j/per_doubling))``
  steps for j = 0, 1, ..., and the last step: a logarithmic grid of examples seen.
- **Cost of the methods' measurements**: every S_NTK probe is timed (``costs.probe_seconds``, ``n_probes``)
  beside the training steps' own seconds.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from phasecore.data import load_dataset
from phasecore.data.base import PairedDataset
from phasecore.groundtruth.contrastive import (
    HEAD_DIM,
    TEMPERATURE,
    classify_by_prototypes,
    resolve_groups,
    symmetric_info_nce,
    unseen_classes,
)
from phasecore.groundtruth.outcome_test import decide_outcome, group_score, kind_means
from phasecore.screening.profile import select_params
from phasecore.sources.base import Encoder, Inputs, batch_size, call_encoder, slice_inputs
from phasecore.threads import torch_threads
from phasecore.training.methods import SIDES, Method, MethodSpec, ProbeSettings, measure_s_ntk
from phasecore.zoo.recipe import TRAIN_DATASET
from phasecore.zoo.train import epoch_batches

#: the default dataset: the zoo's training dataset (its 32-px renders), 80 classes, G = 9 held-out groups
DATASET = TRAIN_DATASET
THRESHOLDS: tuple[float, ...] = (0.3, 0.5)
#: (done steps, total steps, {"loss", "alignment"}) after every step; at a checkpoint the checkpoint's record with
#: "checkpoint": True
ProgressFn = Callable[[int, int, Mapping[str, Any]], None]
#: measure_s_ntk's signature: (module, inputs, alpha=, probe=, params=) -> (S_NTK or None, note)
MeasureImpl = Callable[..., tuple["float | None", "str | None"]]


@dataclass(frozen=True)
class AlignSettings:
    """One alignment training (module docstring). ``examples``: the budget per fold, in training examples
    (``steps = ceil(examples / batch)``); ``n_train``/``train_seed`` and ``n_eval``/``eval_seed``: the training
    pairs and the evaluation sample of ``dataset`` (different seeds, so no image is in both); ``seed``: the heads'
    initialisation and the batch order; ``threads``: torch's intra-op threads while it runs (1: deterministic on
    one machine, as the zoo trains)."""

    dataset: str = DATASET
    train: str = "all"
    examples: int = 2**15
    batch: int = 128
    lr: float = 1e-3
    head_dim: int = HEAD_DIM
    temperature: float = TEMPERATURE
    folds: int = 3
    n_train: int = 8000
    train_seed: int = 11
    n_eval: int = 960
    eval_seed: int = 1
    seed: int = 0
    per_doubling: int = 2
    clip: float = 1.0
    failure_threshold: float = 0.2
    outcome_alpha: float = 0.05
    thresholds: tuple[float, ...] = THRESHOLDS
    threads: int = 1
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        if self.train not in ("heads", "all") and not (
            self.train.startswith("last:") and self.train[5:].isdigit() and int(self.train[5:]) >= 1
        ):
            raise ValueError(f"train={self.train!r} is not heads, all or last:K with K ≥ 1")
        for name in ("examples", "batch", "folds", "n_train", "n_eval", "per_doubling", "threads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.batch < 2 or not self.lr > 0 or not self.temperature > 0 or not self.clip > 0:
            raise ValueError("batch must be ≥ 2 and lr, temperature and clip > 0")

    @property
    def steps(self) -> int:
        return math.ceil(self.examples / self.batch)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = list(self.thresholds)
        return out


def checkpoint_grid(steps: int, per_doubling: int = 2) -> list[int]:
    """Step 0, ``round(2^(j/per_doubling))`` for j = 0, 1, ... below ``steps``, and ``steps``: a logarithmic grid
    (ratio 2^(1/per_doubling) between neighbours once they are apart), de-duplicated, ascending."""
    if steps < 1 or per_doubling < 1:
        raise ValueError(f"need steps ≥ 1 and per_doubling ≥ 1, got {steps}, {per_doubling}")
    points, j = {0, steps}, 0
    while (step := round(2 ** (j / per_doubling))) < steps:
        points.add(step)
        j += 1
    return sorted(points)


def value_folds(groups: Sequence[Mapping[str, Any]], folds: int) -> list[list[int]]:
    """The groups (by index) dealt round-robin into ``folds`` folds after sorting them by the kind of value they
    hold out (``shapes``: colours, then shapes), so that each fold holds out some of each kind."""
    if not 1 <= folds <= len(groups):
        raise ValueError(f"folds must lie in [1, {len(groups)}] (one group at least per fold), got {folds}")

    def kind(index: int) -> str:
        held = groups[index].get("held_out")
        return str(next(iter(held))) if isinstance(held, Mapping) and held else ""

    order = sorted(range(len(groups)), key=lambda i: (kind(i), i))
    return [order[f::folds] for f in range(folds)]


@functools.lru_cache(maxsize=4)
def _dataset(ref: str, n: int, seed: int) -> PairedDataset:
    """The rendered sample (kept per process: an experiment's runs share their training and evaluation pairs)."""
    return load_dataset(ref, n=n, seed=seed)


@dataclass
class _PairData:
    """Everything a run reads, preprocessed by each encoder once: the training pairs' inputs per side and their
    labels, each group's held-out images and labels (evaluation sample), each class's caption templates."""

    train: dict[str, Inputs]
    train_labels: np.ndarray
    groups: list[Mapping[str, Any]]
    eval_images: dict[int, tuple[Inputs, np.ndarray]]
    templates: dict[int, Inputs]
    n_classes: int
    described: dict[str, Any]


def _pair_data(vision: Encoder, language: Encoder, settings: AlignSettings) -> _PairData:
    train = _dataset(settings.dataset, settings.n_train, settings.train_seed)
    evaluation = _dataset(settings.dataset, settings.n_eval, settings.eval_seed)
    if train.class_names != evaluation.class_names:
        raise ValueError("the training and evaluation samples have different classes")
    groups = list(resolve_groups(evaluation.outcome_groups, evaluation.labels, settings.seed))
    labels = evaluation.labels
    eval_images: dict[int, tuple[Inputs, np.ndarray]] = {}
    templates: dict[int, Inputs] = {}
    for index, group in enumerate(groups):
        members = sorted(int(c) for c in group["classes"])
        rows = np.flatnonzero(np.isin(labels, members))
        if len(np.unique(labels[rows])) < len(members):
            raise ValueError(f"the evaluation sample lacks images of held-out group {index}: raise n_eval")
        eval_images[index] = (vision.preprocess([evaluation.images[i] for i in rows]), labels[rows])
        for c in members:
            templates[c] = language.preprocess(evaluation.class_captions[c])
    return _PairData(
        train={"vision": vision.preprocess(train.images), "language": language.preprocess(train.captions)},
        train_labels=train.labels,
        groups=groups,
        eval_images=eval_images,
        templates=templates,
        n_classes=len(train.class_names),
        described={
            "train": {"dataset": train.name, "n": train.n, "seed": train.seed},
            "eval": {"dataset": evaluation.name, "n": evaluation.n, "seed": evaluation.seed},
            "n_classes": len(train.class_names),
            "groups": [
                {"classes": sorted(int(c) for c in g["classes"]), "held_out": g.get("held_out")} for g in groups
            ],
        },
    )


def trainable_names(tower: nn.Module, train: str) -> list[str]:
    """The tower parameters that train under ``train``: none (``heads``), all, or METRICS §0's ``last:K``."""
    if train == "heads":
        return []
    names = [name for name, _ in tower.named_parameters()]
    if train == "all":
        return names
    selected = select_params(tower, train)
    return names if selected is None else selected


class _Fold:
    """One fold's training: its own copies of the towers, heads, optimiser, batches and method."""

    def __init__(
        self,
        index: int,
        group_ids: list[int],
        data: _PairData,
        towers: Mapping[str, Encoder],
        settings: AlignSettings,
        method: Method,
        measure: MeasureImpl,
    ) -> None:
        self.index, self.group_ids, self.data, self.settings, self.method = index, group_ids, data, settings, method
        unseen: set[int] = set()
        for g in group_ids:
            unseen |= unseen_classes(data.groups[g])
        self.train_classes = sorted(set(range(data.n_classes)) - unseen)
        self.rows = np.flatnonzero(np.isin(data.train_labels, self.train_classes))
        if len(self.train_classes) < 2 or self.rows.size < settings.batch:
            raise ValueError(
                f"fold {index} leaves {len(self.train_classes)} training classes and {self.rows.size} training "
                f"pairs (batch {settings.batch}): use more folds or more training pairs"
            )
        seed = int(np.random.SeedSequence([settings.seed, index, 22]).generate_state(1)[0])
        self.towers = {side: copy.deepcopy(towers[side]).eval() for side in SIDES}
        self.trainable = {side: trainable_names(self.towers[side], settings.train) for side in SIDES}
        for side in SIDES:
            keep = set(self.trainable[side])
            for name, parameter in self.towers[side].named_parameters():
                parameter.requires_grad_(name in keep)
        stats_rows = torch.as_tensor(self.rows[:1024])
        self.cached: dict[str, torch.Tensor] | None = None
        with torch.no_grad():
            outputs = {side: self._tower_out(side, stats_rows) for side in SIDES}
            if not any(self.trainable.values()):  # towers frozen: their outputs on every training pair, once
                every = torch.arange(batch_size(data.train["vision"]))
                self.cached = {side: self._tower_out(side, every) for side in SIDES}
        self.mean = {side: outputs[side].mean(0) for side in SIDES}
        self.std = {side: outputs[side].std(0).clamp_min(1e-6) for side in SIDES}
        k = max(1, min(settings.head_dim, *(outputs[side].shape[1] for side in SIDES)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleDict({side: nn.Linear(outputs[side].shape[1], k) for side in SIDES})
        groups: list[dict[str, Any]] = []
        for side in SIDES:
            params = [p for p in self.towers[side].parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "side": side})
        groups.append({"params": list(self.heads.parameters()), "side": "heads"})
        self.optimiser = torch.optim.Adam(groups, lr=settings.lr)
        self.parameters = [p for g in groups for p in g["params"]]
        self.batches = epoch_batches(self.rows, settings.batch, torch.Generator().manual_seed(seed))
        probe_rows = np.sort(np.random.default_rng([seed, 3]).permutation(self.rows)[: settings.probe.subset])
        self.probe_inputs = {
            side: slice_inputs(data.train[side], torch.as_tensor(probe_rows)) for side in SIDES
        }
        self._measure_impl = measure
        self.measurements: list[dict[str, Any]] = []
        self.probe_seconds = 0.0
        self.step_seconds = 0.0
        self.eval_seconds = 0.0
        self.losses: list[float] = []
        self.step_now = 0
        self.diverged_at: int | None = None  # the step whose loss was not finite (the fold stops training there)

    def _tower_out(self, side: str, rows: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for start in range(0, len(rows), 512):
            out.append(call_encoder(self.towers[side], slice_inputs(self.data.train[side], rows[start : start + 512])))
        return torch.cat(out).float()

    def measure(self, side: str, alpha: float) -> float | None:
        """S_NTK of α·tower now (the methods' measurement), timed and logged."""
        tick = time.perf_counter()
        trainable = self.trainable[side]
        every = len(trainable) == sum(1 for _ in self.towers[side].parameters())
        params = None if every or not trainable else trainable
        s, note = self._measure_impl(
            self.towers[side], self.probe_inputs[side], alpha=alpha, probe=self.settings.probe, params=params
        )
        seconds = time.perf_counter() - tick
        self.probe_seconds += seconds
        self.measurements.append(
            {"fold": self.index, "step": self.step_now, "side": side, "alpha": alpha, "s_ntk": s,
             "seconds": round(seconds, 3), **({"note": note} if note else {})}
        )  # fmt: skip
        return s

    def set_rates(self) -> None:
        for group in self.optimiser.param_groups:
            side = group["side"]
            group["lr"] = self.settings.lr * (1.0 if side == "heads" else self.method.rate(side))

    @property
    def tunable(self) -> bool:
        """Whether a tower trains: with ``train=heads`` the methods have nothing to act on and measure nothing."""
        return any(self.trainable.values())

    def start(self) -> None:
        if self.tunable:
            self.method.start(self.measure)
        self.set_rates()

    def _embed(self, side: str, rows: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            out = self.cached[side][rows]
        else:
            out = call_encoder(self.towers[side], slice_inputs(self.data.train[side], rows))
        return self._project(side, out)

    def step(self, step: int) -> float:
        self.step_now = step
        if self.tunable and self.method.measures_at(step):
            self.method.update(step, self.measure)
            self.set_rates()
        if self.diverged_at is not None:  # a diverged fold trains no further (its weights are not finite)
            self.losses.append(math.nan)
            return math.nan
        tick = time.perf_counter()
        rows = next(self.batches)
        loss = symmetric_info_nce(self._embed("vision", rows), self._embed("language", rows), self.settings.temperature)
        value = float(loss.detach())
        if not math.isfinite(value):
            self.diverged_at = step
        else:
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward has no annotations
            nn.utils.clip_grad_norm_(self.parameters, self.settings.clip)
            self.optimiser.step()
        self.step_seconds += time.perf_counter() - tick
        self.losses.append(value)
        return value

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, Any]]:
        """s_g of each of this fold's groups now (module docstring, "Score")."""
        tick = time.perf_counter()
        scores = []
        for g in self.group_ids:
            members = np.array(sorted(int(c) for c in self.data.groups[g]["classes"]), dtype=np.int64)
            images, truth = self.data.eval_images[g]
            z_v = self._project("vision", call_encoder(self.towers["vision"], images))
            template_z = [
                self._project("language", call_encoder(self.towers["language"], self.data.templates[int(c)]))
                for c in members
            ]
            predicted = classify_by_prototypes(z_v, template_z, members)
            scores.append({**group_score(members, truth, predicted), "group": g})
        self.eval_seconds += time.perf_counter() - tick
        return scores

    def _project(self, side: str, out: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads[side]((out.float() - self.mean[side]) / self.std[side]), dim=1)


def examples_to_reach(checkpoints: Sequence[Mapping[str, Any]], threshold: float) -> int | None:
    """Examples seen at the first checkpoint whose alignment_score ≥ ``threshold`` (reached somewhere after the
    checkpoint before it), None when no checkpoint reaches it."""
    for point in checkpoints:
        if point["alignment_score"] is not None and point["alignment_score"] >= threshold:
            return int(point["examples"])
    return None


def align_pair(
    vision: Encoder,
    language: Encoder,
    settings: AlignSettings | None = None,
    method: MethodSpec | None = None,
    *,
    progress: ProgressFn | None = None,
    measure: MeasureImpl | None = None,
) -> dict[str, Any]:
    """Train and score one pair (module docstring); the JSON-able record of the run.

    ``measure`` replaces ``methods.measure_s_ntk`` (tests stub it). Returns {vision, language (canonical refs),
    settings, method, data (samples, groups, folds), checkpoints [{step, examples, alignment_score, outcome,
    p_above, p_below, group_means, s_g, loss, rate, alpha, s_ntk, diverged_folds}], reached {threshold: examples
    or None}, final (the last checkpoint), methods_state (per fold), diverged [{fold, step}] (folds whose loss went
    non-finite: they train no further and are scored as they stand), measurements [{fold, step, side, alpha,
    s_ntk, seconds}], costs {setup, train, probe, eval, total seconds; n_probes; probe_share}}."""
    settings = settings or AlignSettings()
    spec = method or MethodSpec()
    if vision.modality != "vision" or language.modality != "language":
        raise ValueError("align_pair takes a vision encoder and a language encoder, in that order")
    started = time.perf_counter()
    with torch_threads(settings.threads):
        data = _pair_data(vision, language, settings)
        towers = {"vision": vision, "language": language}
        folds = [
            _Fold(i, ids, data, towers, settings, spec.build(), measure or measure_s_ntk)
            for i, ids in enumerate(value_folds(data.groups, settings.folds))
        ]
        setup_seconds = time.perf_counter() - started
        for fold in folds:
            fold.start()
        steps = settings.steps
        grid = set(checkpoint_grid(steps, settings.per_doubling))
        checkpoints: list[dict[str, Any]] = []
        last_loss: float | None = None
        seen = 0  # losses already summarised in a checkpoint, per fold
        for step in range(steps + 1):
            if step in grid:
                point = _checkpoint(folds, data, settings, step, seen)
                seen = step
                checkpoints.append(point)
                if progress:
                    progress(step, steps, {**point, "alignment": point["alignment_score"], "checkpoint": True})
            if step == steps:
                break
            losses = [loss for loss in (fold.step(step) for fold in folds) if math.isfinite(loss)]
            last_loss = float(np.mean(losses)) if losses else None
            if progress:
                progress(step + 1, steps, {"loss": last_loss, "alignment": checkpoints[-1]["alignment_score"]})
    total = time.perf_counter() - started
    probe_seconds = sum(f.probe_seconds for f in folds)
    train_seconds = sum(f.step_seconds for f in folds)
    measurements = [m for f in folds for m in f.measurements]
    return {
        "vision": vision.identity.ref,
        "language": language.identity.ref,
        "settings": settings.to_dict(),
        "method": spec.to_dict(),
        "data": {
            **data.described,
            "folds": [
                {"groups": f.group_ids, "train_classes": len(f.train_classes), "train_pairs": int(f.rows.size)}
                for f in folds
            ],
        },
        "checkpoints": checkpoints,
        "reached": {f"{t:g}": examples_to_reach(checkpoints, t) for t in settings.thresholds},
        "final": checkpoints[-1],
        "methods_state": [f.method.state() for f in folds],
        "diverged": [{"fold": f.index, "step": f.diverged_at} for f in folds if f.diverged_at is not None],
        "measurements": measurements,
        "costs": {
            "setup_seconds": round(setup_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "probe_seconds": round(probe_seconds, 2),
            "eval_seconds": round(sum(f.eval_seconds for f in folds), 2),
            "total_seconds": round(total, 2),
            "n_probes": len(measurements),
            "probe_share": round(probe_seconds / train_seconds, 4) if train_seconds > 0 else None,
            "threads": settings.threads,
            "torch": torch.__version__,
        },
    }


def _checkpoint(
    folds: Sequence[_Fold], data: _PairData, settings: AlignSettings, step: int, seen: int
) -> dict[str, Any]:
    """All G group scores now (each from its fold), §7's score and outcome, and the folds' state."""
    scores = sorted((s for fold in folds for s in fold.evaluate()), key=lambda s: s["group"])
    s_g = np.array([s["s_g"] for s in scores], dtype=np.float64)
    decision = decide_outcome(
        s_g, tau=settings.failure_threshold, alpha=settings.outcome_alpha, seed=settings.seed
    )
    means = kind_means(scores, data.groups)
    recent = [loss for fold in folds for loss in fold.losses[seen:step] if math.isfinite(loss)]

    def fold_mean(values: Collection[float | None]) -> float | None:
        finite = [v for v in values if v is not None]
        return float(np.mean(finite)) if finite else None

    return {
        "step": step,
        "examples": step * settings.batch,
        "alignment_score": decision["alignment_score"],
        "outcome": decision["outcome"],
        "p_above": decision["p_above"],
        "p_below": decision["p_below"],
        "group_means": means,
        "s_g": [round(float(s), 4) for s in s_g],
        "loss": float(np.mean(recent)) if recent else None,
        "rate": {side: fold_mean([f.method.rate(side) for f in folds]) for side in SIDES},
        "alpha": {side: fold_mean([f.method.alpha[side] for f in folds]) for side in SIDES},
        "s_ntk": {side: fold_mean([f.method.s_ntk[side] for f in folds]) for side in SIDES},
        "diverged_folds": sum(f.diverged_at is not None and f.diverged_at < step for f in folds),
    }
