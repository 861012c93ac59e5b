"""The zoo's trainer and weight cache: a recipe in, the weights of its tower out (trained once, then read).

One run trains what a recipe's ``run()`` names: both towers of a joint run together (symmetric InfoNCE over all
classes, a learned temperature), or one tower alone (unimodal), on ``TRAIN_SIZE`` pairs of ``TRAIN_DATASET``
drawn with ``TRAIN_DATA_SEED``. AdamW (weight decay 0.01) with a one-cycle schedule peaking at ``lr/out``,
batch ``BATCH``, gradient norm clipped at 1. The loss of a run with output multiplier α is computed on
``α·g(x)``; InfoNCE normalises the embeddings and the heads read the features before the multiplier, so α acts
through the learning rate alone (AdamW's step ignores the loss's scale, so dividing the loss by α² would do
nothing; dividing the step by α keeps the weights within O(1/α) of their initialisation, the lazy regime).

Determinism: a run is a function of its recipe on one machine. Every tower is initialised under its own seed, the
batches come from a ``torch.Generator`` seeded by the run, and training runs single-threaded (intra-op threads
change float reduction order). Weights are cached as safetensors under ``zoo_cache_root()``, one folder per run
(named by the hash of ``run_key()``, which holds the zoo version), written atomically under a file lock so that
two workers asking for the same run train it once.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from phasecore.data.shapes import load_shapes_pairs
from phasecore.paths import default_cache_home
from phasecore.threads import single_thread
from phasecore.zoo.recipe import BATCH, TRAIN_DATA_SEED, TRAIN_DATASET, TRAIN_SIZE, ZOO_VERSION, ZooRecipe
from phasecore.zoo.towers import ConvTower, Tower, build_tower, scale_init
from phasecore.zoo.vocab import MASK, PAD, encode, vocabulary

#: images are scaled to mean 0, about unit spread: (x − IMAGE_MEAN) / IMAGE_STD
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25
_TRAIN_QUERY = TRAIN_DATASET.partition("?")[2]


def zoo_cache_root() -> Path:
    """``$PHASESCREEN_HOME/zoo`` (the evidence run's own home), else ``~/.cache/phasescreen/zoo``."""
    return default_cache_home() / "zoo"


@dataclass(frozen=True)
class TrainingSet:
    """The zoo's training pairs as tensors: images ``(N, 3, 32, 32)`` normalised, ``input_ids`` /
    ``attention_mask`` ``(N, T)``, ``labels (N,)`` (the image's class)."""

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_colors: int
    n_shapes: int


def images_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Images ``(H, W, 3) float32 in [0, 1]`` -> ``(B, 3, H, W)``, scaled by ``IMAGE_MEAN`` / ``IMAGE_STD``."""
    x = torch.from_numpy(np.stack(images).astype(np.float32)).permute(0, 3, 1, 2)
    return (x - IMAGE_MEAN) / IMAGE_STD


@functools.lru_cache(maxsize=4)
def training_set(caption_noise: float = 0.0) -> TrainingSet:
    """The training pairs (rendered once per process and caption-noise level)."""
    query = _TRAIN_QUERY + (f"&caption_noise={caption_noise!r}" if caption_noise else "")
    data = load_shapes_pairs(query, n=TRAIN_SIZE, seed=TRAIN_DATA_SEED)
    ids, mask = encode(data.captions)
    options = data.extra["options"]
    return TrainingSet(
        images=images_tensor(data.images),
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        labels=torch.from_numpy(data.labels.astype(np.int64)),
        n_colors=int(options["colors"]),
        n_shapes=int(options["shapes"]),
    )




def initial_tower(recipe: ZooRecipe) -> Tower:
    """The seeded initialisation of ``recipe``'s tower (``init`` applied): what ``mode=random`` is and what
    ``blend`` goes toward."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build_tower(recipe.tower, recipe.width, recipe.text)
    scale_init(model, recipe.init)
    return model


def _run_seed(run: ZooRecipe) -> int:
    return int(np.random.SeedSequence([run.seed, run.partner_seed, 17]).generate_state(1)[0])


def epoch_batches(rows: int | np.ndarray, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Batches of ``batch`` rows, forever: epochs of seeded permutations of ``rows`` (``range(rows)`` for an
    int), cut in order. The zoo's training and the alignment trainer (``phasecore.training``) both draw so."""
    pool = torch.arange(rows) if isinstance(rows, int) else torch.as_tensor(rows, dtype=torch.int64)
    order = torch.empty(0, dtype=torch.int64)
    while True:
        while len(order) < batch:
            order = torch.cat([order, pool[torch.randperm(len(pool), generator=generator)]])
        yield order[:batch]
        order = order[batch:]


def _batches(n: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``BATCH`` indices into ``range(n)``."""
    return itertools.islice(epoch_batches(n, BATCH, generator), steps)


def _optimiser(parameters: list[nn.Parameter], run: ZooRecipe) -> tuple[torch.optim.Optimizer, Any]:
    lr = run.lr / run.out
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=run.steps)
    return optimiser, schedule


def _step(loss: torch.Tensor, parameters: list[nn.Parameter], optimiser: torch.optim.Optimizer, schedule: Any) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward has no annotations
    nn.utils.clip_grad_norm_(parameters, 1.0)
    optimiser.step()
    schedule.step()


def train_joint(run: ZooRecipe) -> tuple[dict[str, nn.Module], list[float]]:
    """Both towers of a joint run (``run.tower == "vision"``; the text tower's seed is ``run.partner_seed``)."""
    data = training_set(run.caption_noise)
    vision = initial_tower(run)
    text = initial_tower(replace(run, tower="text", seed=run.partner_seed, partner=None))
    log_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    parameters = [*vision.parameters(), *text.parameters(), log_scale]
    optimiser, schedule = _optimiser(parameters, run)
    generator = torch.Generator().manual_seed(_run_seed(run))
    target = torch.arange(BATCH)
    losses = []
    vision.train()
    text.train()
    for index in _batches(len(data.labels), run.steps, generator):
        z_v = F.normalize(run.out * vision(data.images[index]), dim=-1)
        z_l = F.normalize(run.out * text(data.input_ids[index], data.attention_mask[index]), dim=-1)
        logits = log_scale.clamp(max=np.log(100.0)).exp() * z_v @ z_l.T
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        _step(loss, parameters, optimiser, schedule)
        losses.append(float(loss.detach()))
    return {"vision": vision.eval(), "text": text.eval()}, losses


def train_unimodal(run: ZooRecipe) -> tuple[dict[str, nn.Module], list[float]]:
    """One tower alone: ``class`` (C-way head), ``attribute`` (a colour head and a shape head) or, for text,
    ``masked`` (one word per caption replaced by ``[MASK]``, predicted from the pooled caption)."""
    data = training_set(run.caption_noise)
    tower = initial_tower(run)
    width = tower.width
    n_classes = data.n_colors * data.n_shapes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed + 1)
        sizes = {"class": [n_classes], "attribute": [data.n_colors, data.n_shapes], "masked": [len(vocabulary())]}
        heads = nn.ModuleList(nn.Linear(width, k) for k in sizes[str(run.objective)])
    parameters = [*tower.parameters(), *heads.parameters()]
    optimiser, schedule = _optimiser(parameters, run)
    generator = torch.Generator().manual_seed(_run_seed(run))
    losses = []
    tower.train()
    for index in _batches(len(data.labels), run.steps, generator):
        labels = data.labels[index]
        if isinstance(tower, ConvTower):
            features = tower.pooled(data.images[index])
        else:
            ids, mask = data.input_ids[index], data.attention_mask[index]
            if run.objective == "masked":
                ids, words = _mask_one_word(ids, mask, generator)
            features = tower.pooled(ids, mask)
        if run.objective == "class":
            targets = [labels]
        elif run.objective == "attribute":
            targets = [labels // data.n_shapes, labels % data.n_shapes]
        else:
            targets = [words]
        loss = sum(F.cross_entropy(head(features), y) for head, y in zip(heads, targets, strict=True))
        assert isinstance(loss, torch.Tensor)
        _step(loss, parameters, optimiser, schedule)
        losses.append(float(loss.detach()))
    return {run.tower: tower.eval()}, losses


def _mask_one_word(
    ids: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption with one of its words (uniform over its real words) replaced by ``MASK``; that word."""
    lengths = mask.sum(1)
    position = (torch.rand(len(ids), generator=generator) * lengths).long().clamp(max=lengths - 1)
    rows = torch.arange(len(ids))
    words = ids[rows, position].clone()
    masked = ids.clone()
    masked[rows, position] = MASK
    assert not bool((words == PAD).any())
    return masked, words


def run_folder(run: ZooRecipe, root: Path | None = None) -> Path:
    key = run.run_key()
    return (root or zoo_cache_root()) / hashlib.sha256(key.encode()).hexdigest()[:20]


def ensure_run(recipe: ZooRecipe, root: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The cache folder of ``recipe``'s run, trained first when absent; and its ``run.json`` record (run key,
    recipe, seconds, final loss, torch version, whether this call trained it)."""
    run = recipe.run()
    folder = run_folder(run, root)
    record = folder / "run.json"
    if record.is_file():
        return folder, {**json.loads(record.read_text()), "trained_now": False}
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.is_file():  # another process trained it while this one waited
            return folder, {**json.loads(record.read_text()), "trained_now": False}
        start = time.perf_counter()
        with single_thread():
            towers, losses = train_joint(run) if run.mode == "joint" else train_unimodal(run)
        seconds = time.perf_counter() - start
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for name, model in towers.items():
                save_file(
                    {k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / f"{name}.safetensors")
                )
            info = {
                "run_key": run.run_key(),
                "zoo_version": ZOO_VERSION,
                "recipe": run.query(),
                "train_dataset": TRAIN_DATASET,
                "train_size": TRAIN_SIZE,
                "train_data_seed": TRAIN_DATA_SEED,
                "seconds": round(seconds, 2),
                "threads": 1,
                "loss_first": losses[0],
                "loss_last": float(np.mean(losses[-10:])),
                "torch": torch.__version__,
            }
            (staging / "run.json").write_text(json.dumps(info, indent=1))
            if folder.exists():
                shutil.rmtree(folder)  # a folder without run.json: an interrupted write
            staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder, {**info, "trained_now": True}


def load_tower(
    recipe: ZooRecipe, *, blend: float | None = None, root: Path | None = None
) -> tuple[Tower, dict[str, Any]]:
    """The network of ``recipe``'s tower in eval mode, trained (or read from the cache), or its initialisation
    for ``mode=random``; ``blend`` = t gives ``(1 − t)·θ_trained + t·θ_init``. Returns it and a record for the
    model's identity (the run's record and the sha256 of its weights file)."""
    model = initial_tower(recipe)
    if recipe.mode == "random":
        return model.eval(), {"run": None}
    folder, info = ensure_run(recipe, root)
    weights = folder / f"{recipe.tower}.safetensors"
    trained = load_file(str(weights))
    if blend is not None:
        init = model.state_dict()
        trained = {k: torch.lerp(v, init[k], float(blend)) for k, v in trained.items()}
    model.load_state_dict(trained, strict=True)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return model.eval(), {"run": info, "weights_sha256": digest}
