"""A short real alignment of two frozen encoders: linear heads trained with a symmetric InfoNCE loss (LiT with both
towers frozen), scored on held-out values as METRICS §7 scores its ridge map.

This is what a team's training job would report back (``POST /v1/screenings/{id}/outcomes``), and what the
outcome simulation reports for the zoo's pairs (docs/evidence.md, "Reported outcomes"): a real contrastive
training, not the ridge proxy of §7. For every held-out group g of the §7 construction (``held_out_groups`` of
the dataset, or seeded class pairs) the two heads are trained from scratch on the pairs whose class is neither in
g nor in its ``exclude`` list, so g's values are unseen by the heads; g's images are then classified among g's
classes against prototypes made of the class caption templates through the trained text head, exactly as §7
classifies through its map, and ``s_g = (b_g − 1/|g|) / (1 − 1/|g|)``. The returned ``value`` is ``mean_g s_g``
(0 at chance, 1 perfect) and ``outcome`` is §7's sign-flip decision at the given τ and α.

Choices: heads map to ``HEAD_DIM`` = 32 dimensions (capped by the smaller embedding width), temperature fixed at
``TEMPERATURE`` = 0.1, Adam with learning rate ``LR`` = 1e-2, ``STEPS`` = 150 minibatches of ``BATCH`` = 128 drawn
from a seeded generator; the tower outputs are standardised per feature on the fitting pairs first (so that one
learning rate suits towers of any output scale). Runs single-threaded: the matrices are tiny.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from phasecore.data.base import PairedDataset
from phasecore.groundtruth.outcome_test import decide_outcome, group_score, kind_means, outcome_groups
from phasecore.sources.base import Encoder, batch_size, call_encoder, slice_inputs
from phasecore.threads import single_thread

HEAD_DIM, TEMPERATURE, LR, STEPS, BATCH = 32, 0.1, 1e-2, 150, 128
METHOD = "linear-heads"


def _standardise(fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fit.mean(0), fit.std(0).clamp_min(1e-6)


def symmetric_info_nce(z_v: torch.Tensor, z_l: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The symmetric InfoNCE loss of paired rows (CLIP's): row i of ``z_v`` and of ``z_l`` (both L2-normalised,
    ``(B, k)``) are a pair, every other row of the batch a negative; the mean of the image→text and text→image
    cross-entropies of the logits ``z_v z_lᵀ / temperature``."""
    logits = z_v @ z_l.T / temperature
    target = torch.arange(len(z_v), device=z_v.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def resolve_groups(
    groups: Sequence[Mapping[str, Any]] | None, labels: np.ndarray, seed: int
) -> Sequence[Mapping[str, Any]]:
    """The held-out groups of §7: the dataset's own (``{"classes", "exclude", "held_out"}``), else the seeded
    pairs of classes of ``outcome_groups`` over the classes present in ``labels``."""
    if groups is not None:
        return groups
    rng = np.random.default_rng(seed)
    return [{"classes": [int(c) for c in g]} for g in outcome_groups(np.unique(labels), rng)]


def unseen_classes(group: Mapping[str, Any]) -> set[int]:
    """The classes a held-out group keeps out of every fit: its own and those of its ``exclude`` list (the classes
    holding one of its held-out values)."""
    return {int(c) for c in group["classes"]} | {int(c) for c in group.get("exclude", ())}


def classify_by_prototypes(
    image_z: torch.Tensor, template_z: Sequence[torch.Tensor], members: np.ndarray
) -> np.ndarray:
    """§7's classification in a shared space: image rows ``image_z`` (L2-normalised, ``(n, k)``) against one
    prototype per class of ``members``, the mean of that class's L2-normalised template rows ``template_z[i]``
    (re-normalised); the predicted class id of each image (cosine argmax)."""
    prototypes = torch.stack([t.mean(0) for t in template_z])
    predicted: np.ndarray = members[(image_z @ F.normalize(prototypes, dim=1).T).argmax(1).numpy()]
    return predicted


def train_heads(
    E_v: torch.Tensor, E_l: torch.Tensor, *, steps: int = STEPS, lr: float = LR, dim: int = HEAD_DIM, seed: int = 0
) -> tuple[nn.Linear, nn.Linear, list[float]]:
    """Two linear heads ``(d_v → k)``, ``(d_l → k)`` trained on the paired rows of ``E_v``, ``E_l`` (already
    standardised) with the symmetric InfoNCE loss at temperature ``TEMPERATURE``; and the loss per step."""
    if E_v.shape[0] != E_l.shape[0] or E_v.shape[0] < 2:
        raise ValueError(f"need ≥ 2 paired rows, got {E_v.shape[0]} image and {E_l.shape[0]} caption rows")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    k = max(1, min(dim, E_v.shape[1], E_l.shape[1]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head_v, head_l = nn.Linear(E_v.shape[1], k), nn.Linear(E_l.shape[1], k)
    optimiser = torch.optim.Adam([*head_v.parameters(), *head_l.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n, losses = E_v.shape[0], []
    for _ in range(steps):
        index = torch.randperm(n, generator=generator)[: min(BATCH, n)]
        z_v = F.normalize(head_v(E_v[index]), dim=1)
        z_l = F.normalize(head_l(E_l[index]), dim=1)
        loss = symmetric_info_nce(z_v, z_l, TEMPERATURE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward has no annotations
        optimiser.step()
        losses.append(float(loss.detach()))
    return head_v, head_l, losses


def held_out_contrastive(
    E_v: np.ndarray,
    E_l: np.ndarray,
    labels: np.ndarray,
    templates: Sequence[np.ndarray],
    *,
    groups: Sequence[Mapping[str, Any]] | None = None,
    steps: int = STEPS,
    lr: float = LR,
    dim: int = HEAD_DIM,
    seed: int = 0,
    failure_threshold: float = 0.03,
    outcome_alpha: float = 0.05,
) -> dict[str, Any]:
    """Contrastive heads trained per held-out group and scored on it (module docstring).

    E_v ``(N, d_v)`` and E_l ``(N, d_l)``: the frozen towers' outputs for N pairs; labels ``(N,)`` in [0, C);
    templates: per class c, the language tower's outputs ``(n_c, d_l)`` for c's caption templates; groups: the
    dataset's held-out groups (``{"classes", "exclude", "held_out"}``), else §7's seeded pairs of classes.
    Returns {method, value (mean s_g), group_scores [{classes, s_g, b_g, n, held_out}], group_means (per kind of
    held-out value, or None), n_groups, outcome, failed, p_above, p_below, steps, examples (pairs seen per
    group: steps × batch), head_dim, temperature, lr, loss_last (mean final loss over groups)}.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(templates)
    if E_v.shape[0] != labels.size or E_l.shape[0] != labels.size:
        raise ValueError("E_v, E_l and labels must have one row per pair")
    groups = resolve_groups(groups, labels, seed)
    x_v = torch.as_tensor(np.asarray(E_v, dtype=np.float32))
    x_l = torch.as_tensor(np.asarray(E_l, dtype=np.float32))
    t_l = [torch.as_tensor(np.asarray(t, dtype=np.float32)) for t in templates]
    scores: list[dict[str, Any]] = []
    final_losses: list[float] = []
    with single_thread():
        for index, group in enumerate(groups):
            members = np.array(sorted(int(c) for c in group["classes"]), dtype=np.int64)
            if any(not 0 <= c < n_classes for c in members):
                raise ValueError(f"held-out group {index} names a class outside [0, {n_classes})")
            fit = ~np.isin(labels, sorted(unseen_classes(group)))
            test = np.isin(labels, members)
            if fit.sum() < 2 or len(np.unique(labels[test])) < 2:
                continue
            mu_v, sd_v = _standardise(x_v[fit])
            mu_l, sd_l = _standardise(x_l[fit])
            head_v, head_l, losses = train_heads(
                (x_v[fit] - mu_v) / sd_v, (x_l[fit] - mu_l) / sd_l, steps=steps, lr=lr, dim=dim, seed=seed + index
            )
            final_losses.append(float(np.mean(losses[-10:])))
            with torch.no_grad():
                template_z = [F.normalize(head_l((t_l[c] - mu_l) / sd_l), dim=1) for c in members.tolist()]
                z_v = F.normalize(head_v((x_v[test] - mu_v) / sd_v), dim=1)
                predicted = classify_by_prototypes(z_v, template_z, members)
            scores.append({**group_score(members, labels[test], predicted), "held_out": None})
    if not scores:
        raise ValueError("no held-out group has ≥ 2 of its classes in the sample and pairs left to fit on")
    s_g = np.array([s["s_g"] for s in scores])
    decision = decide_outcome(s_g, tau=failure_threshold, alpha=outcome_alpha, seed=seed)
    return {
        "method": METHOD,
        "value": decision["alignment_score"],
        "group_scores": scores,
        "group_means": kind_means(scores, groups),  # writes each score's held_out kind
        "n_groups": decision["n_groups"],
        "outcome": decision["outcome"],
        "failed": decision["failed"],
        "p_above": decision["p_above"],
        "p_below": decision["p_below"],
        "failure_threshold": failure_threshold,
        "steps": steps,
        "examples": steps * BATCH,
        "head_dim": dim,
        "temperature": TEMPERATURE,
        "lr": lr,
        "loss_last": float(np.mean(final_losses)),
    }


@torch.no_grad()
def embed(encoder: Encoder, items: Sequence[Any], *, chunk: int = 256) -> np.ndarray:
    """The encoder's outputs ``(len(items), d)`` for raw images or captions, in chunks, as float32."""
    inputs = encoder.preprocess(list(items))
    n = batch_size(inputs)
    rows = [call_encoder(encoder, slice_inputs(inputs, slice(i, i + chunk))) for i in range(0, n, chunk)]
    return torch.cat(rows).float().cpu().numpy()


def tower_outputs(encoder: Encoder, dataset: PairedDataset) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """A frozen tower's outputs on a ``PairedDataset``: its images (vision) or captions (language), and for a
    language tower the outputs of each class's caption templates (the prototypes' sources; None for vision)."""
    if encoder.modality == "vision":
        return embed(encoder, dataset.images), None
    templates = [embed(encoder, dataset.class_captions[c]) for c in range(len(dataset.class_names))]
    return embed(encoder, dataset.captions), templates


def contrastive_outcome(vision: Encoder, language: Encoder, dataset: PairedDataset, **options: Any) -> dict[str, Any]:
    """``held_out_contrastive`` of two loaded encoders on a ``PairedDataset``: its images and captions through
    the frozen towers, its class caption templates as the prototypes' sources, its own held-out groups
    (``outcome_groups``, e.g. ``shapes``' held-out colours and shapes) when it has them."""
    E_v, _ = tower_outputs(vision, dataset)
    E_l, templates = tower_outputs(language, dataset)
    assert templates is not None, "a language tower's outputs carry its class templates"
    return held_out_contrastive(E_v, E_l, dataset.labels, templates, groups=dataset.outcome_groups, **options)
