"""Ground truth: measured cross-modal alignment through a fitted linear map (METRICS §7).

"Alignment following CLIP" is measured as zero-shot classification: a map ``W: R^{d_v} → R^{d_l}`` is fitted
on training pairs, and a held-out image is classified by ``argmax_c cos(W φ_v(e_v), t̃_c)`` against the class
prototypes. A linear classifier already passes the seen-class test; only a map that carries meaning passes
the unseen-class test, which gives ``alignment_score`` and the three-way ``outcome``.

The outcome (``aligned`` / ``failed`` / ``inconclusive``) is decided from the per-group scores s_g by
``phasecore.groundtruth.outcome_test`` (§7's sign-flip test).

A dataset may bring its own groups instead (``held_out_groups``; ``shapes`` holds out colours and shapes): each
group g names its classes and the classes never fitted for it, and g's map is fitted on the remaining classes
only. Everything else (s_g, the sign-flip test, the outcome) is unchanged. ``map.unseen_groups_from`` says
which kind ran ("seed" or "dataset").

Choices made here (METRICS leaves them open):

- Features, per outer fold, with means from its training pairs only: vision
  ``φ_v(e) = ‖ẽ − μ_v‖⁻¹(ẽ − μ_v)`` and text ``φ_l(e) = ‖ẽ − μ_l‖⁻¹(ẽ − μ_l)``, with ``ẽ = e/‖e‖`` and μ the
  training mean of ẽ: L2-normalised, centered, L2-normalised again. A prototype ``t_c`` (already a mean of
  normalised text embeddings) becomes ``t̃_c = (t_c − μ_l)/‖t_c − μ_l‖``.
- Folds: seen = ``StratifiedKFold(folds, shuffle, random_state=seed)`` over pairs, predicting among all C
  classes (chance 1/C). Unseen = the §7 groups: the C classes shuffled by ``default_rng(seed)`` (a stream of
  its own, so the groups do not depend on how many draws a map consumes) and cut in order into ``G = C // 2``
  consecutive groups by ``np.array_split``, so the first group holds three classes when C is odd and every
  other group two; ``folds`` plays no part there. The ``unseen`` figure (accuracy, p-values) pools the same
  predictions over pairs (chance ``1/|g|`` per test pair); the outcome uses the per-group ``s_g``.
- Retrieval (image → caption) runs on the seen folds, among the distinct captions of each fold's held-out
  pairs (identical captions are one candidate, and a hit on it is a hit), ranking their ``φ_l(e_l)`` by cosine
  to the mapped image. With fewer than ``RETRIEVAL_MIN_DISTINCT`` of the captions distinct (class templates) the
  correct caption is the class's, and the figure is "n/a". Chance: 1/u_fold (top-1) and min(5, u_fold)/u_fold
  (top-5), u_fold the fold's distinct captions. (``shapes``: about 895 of 960 captions distinct.)
- Within-modal references: ``StandardScaler`` + multinomial ``LogisticRegression(C=1, lbfgs)`` on ``φ_v`` and
  on ``φ_l`` with the labels, on the seen folds; chance 1/C.
- Every accuracy carries its test size n, the 95% Wilson interval and a one-sided p-value against chance:
  ``scipy.stats.binomtest`` when every test pair has the same chance level, otherwise the exact
  Poisson-binomial tail (unseen test with a group of three). Pairs of one class are not independent (a map sends a
  whole class the same way; on shuffled planted data the pair-level p-value falls below 0.05 in about 40% of
  draws), so each figure also carries ``n_effective`` (Kish design effect over classes) and
  ``p_value_clustered`` / ``ci95_clustered`` at that size: read those before calling a figure significant.
- Maps: ``ridge`` (default) ``W = (XᵀX + λI)⁻¹XᵀY`` with λ from a log grid (``RIDGE_LAMBDAS``) by 3-fold
  inner cross-validation of the mean squared error, inner folds of the same kind as the outer ones
  (stratified, or class-disjoint for the unseen test). ``procrustes``: both sides projected on their top-r
  principal axes of the training pairs, ``r = min(d_v, d_l, n_train − 1)``, an orthogonal
  ``Q = argmin ‖X_r Q − Y_r‖_F`` between them (SVD of ``X_rᵀY_r``), mapped back to text space through the
  text axes. ``infonce``: a linear map on the training-span coordinates of φ_v, trained by full-batch Adam
  (``INFONCE`` settings, seeded initialisation) on the image → text InfoNCE loss at a fixed temperature,
  the candidates being the distinct texts of the training pairs (identical captions are one candidate, never
  a false negative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from phasecore.errors import InvalidSettings
from phasecore.groundtruth.outcome_test import (
    check_outcome_settings,
    decide_outcome,
    group_score,
    kind_means,
    outcome_groups,
)
from phasecore.stats import binomial_sf, design_effect, poisson_binomial_sf, wilson_interval

#: the least share of distinct captions for which retrieval is computed
RETRIEVAL_MIN_DISTINCT = 0.5

Method = Literal["ridge", "procrustes", "infonce"]
METHODS: tuple[str, ...] = ("ridge", "procrustes", "infonce")

#: ridge penalties λ tried by the inner cross-validation (features are unit-norm rows)
RIDGE_LAMBDAS: np.ndarray = np.logspace(-4, 4, 17)
RIDGE_INNER_FOLDS = 3
#: InfoNCE map training: temperature τ, Adam steps and learning rate, L2 penalty on W
INFONCE = {"temperature": 0.07, "steps": 300, "lr": 0.02, "weight_decay": 1e-4}
#: InfoNCE acts on at most this many top principal coordinates of φ_v (bounds the cost per step)
INFONCE_MAX_DIM = 128


FIGURES = (
    "seen",
    "unseen",
    "retrieval_top1",
    "retrieval_top5",
    "linear_probe_vision",
    "linear_probe_language",
)


def check_sample(labels: np.ndarray, folds: int) -> None:
    """Raise InvalidSettings when the labelled sample cannot carry the K-fold and unseen-class tests
    (cheap: the service and the CLI call it before any profile is computed).

    Needs ≥ ``folds`` pairs in every class and ≥ 4 classes (G = ⌊C/2⌋ ≥ 2 groups). Fewer than 10 classes
    (G < 5) are accepted: the measurement runs and its outcome is "inconclusive" (too few classes).
    """
    y = np.asarray(labels).astype(np.int64)
    present, counts = np.unique(y, return_counts=True)
    if folds < 2 or counts.min() < folds:
        raise InvalidSettings(
            f"{folds}-fold ground truth needs ≥ {folds} pairs in every class; the smallest class has "
            f"{counts.min()}: raise N or lower the folds"
        )
    if present.size < 4:
        raise InvalidSettings(
            f"the unseen-class test needs ≥ 4 classes (two groups of ≥ 2), the sample has {present.size}"
        )


def measure_alignment(
    E_v: np.ndarray,
    E_l: np.ndarray,
    labels: np.ndarray,
    prototypes: np.ndarray,
    *,
    captions: Sequence[str] | None = None,
    method: Method = "ridge",
    folds: int = 5,
    seed: int = 0,
    failure_threshold: float = 0.03,
    outcome_alpha: float = 0.05,
    held_out_groups: Sequence[AbcMapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measured cross-modal alignment of one pair (METRICS §7); every choice is in the module docstring.

    E_v: (N, d_v) image embeddings; E_l: (N, d_l) caption embeddings, row i of both being pair i;
    labels: (N,) int in [0, C); prototypes: (C, d_l), ``t_c`` = mean normalised text embedding of class c's
    caption templates; captions: the N caption strings (enables retrieval when all distinct).

    Outcome, three-way (§7): over the ``G = ⌊C/2⌋`` class-disjoint held-out groups g (pairs, one triple when
    C is odd), ``b_g`` = mean over c ∈ g of the fraction of c's held-out images predicted as c,
    ``s_g = (b_g − 1/|g|) / (1 − 1/|g|)``, ``alignment_score = mean_g s_g``; the sign-flip test of the s_g
    against ``τ = failure_threshold`` at level ``α = outcome_alpha`` gives ``outcome`` (``decide_outcome``).

    held_out_groups: explicit groups instead of the seeded pairs of classes (a dataset's own construction, e.g.
    ``shapes``, which holds out attribute values): each ``{"classes": [int, ...], "exclude": [int, ...]}``;
    group g's images are classified among its ``classes`` by a map fitted on the pairs whose class is in
    neither ``classes`` nor ``exclude``. Groups must be class-disjoint, of ≥ 2 classes; classes absent from
    the sample are dropped, and a group left with < 2 classes is skipped (``map.skipped_groups``).

    Returns a JSON-able dict with keys ``method``, ``n``, ``n_classes``, ``folds``, ``unseen_folds`` (= G),
    ``seed``, ``failure_threshold`` (τ), ``outcome_alpha`` (α), ``n_distinct_captions``, ``seen_accuracy``,
    ``unseen_accuracy``, ``retrieval_top1``, ``retrieval_top5``, ``linear_probe_vision``,
    ``linear_probe_language`` (float, or None when n/a), ``chance`` ({figure: float | None}), ``figures``
    ({figure: {status, reason, accuracy, correct, n, chance, p_value, ci95, n_effective, p_value_clustered,
    ci95_clustered}} for the six figures of ``FIGURES``), ``alignment_score`` (mean_g s_g), ``group_scores``
    ([{classes: [int], s_g, b_g, n, held_out}] per group, n its held-out images, held_out the kind of value it
    holds out where the dataset's groups name one), ``group_means`` (mean s_g per kind, e.g. colors and shapes;
    None without kinds), ``n_groups`` (G), ``p_above``,
    ``p_below``, ``sign_flip`` ("exact" or "monte-carlo (9999 draws + identity)"), ``outcome`` ("aligned" |
    "failed" | "inconclusive"), ``outcome_reason`` (None when decided, else why not, e.g. "too few classes
    (G = 4 < 5 groups)"), ``failed`` (True / False when decided, None when inconclusive) and ``map`` (the
    method's fitted settings per fold, e.g. the ridge λ chosen in each fold, and the unseen class groups).

    BLAS runs single-threaded inside (``threadpoolctl``): the work is many small dense problems, where
    threads gain nothing and, on a busy machine, cost up to 20× in contention.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _measure_alignment(
            E_v,
            E_l,
            labels,
            prototypes,
            captions=captions,
            method=method,
            folds=folds,
            seed=seed,
            failure_threshold=failure_threshold,
            outcome_alpha=outcome_alpha,
            held_out_groups=held_out_groups,
        )


def _measure_alignment(
    E_v: np.ndarray,
    E_l: np.ndarray,
    labels: np.ndarray,
    prototypes: np.ndarray,
    *,
    captions: Sequence[str] | None,
    method: Method,
    folds: int,
    seed: int,
    failure_threshold: float,
    outcome_alpha: float,
    held_out_groups: Sequence[AbcMapping[str, Any]] | None = None,
) -> dict[str, Any]:
    if method not in METHODS:
        raise InvalidSettings(f"ground-truth method {method!r} is not one of {', '.join(METHODS)}")
    check_outcome_settings(failure_threshold, outcome_alpha)
    X, Y, y, T = _validate(E_v, E_l, labels, prototypes, captions)
    n, n_classes = X.shape[0], T.shape[0]
    check_sample(y, folds)
    present = np.unique(y)
    groups = _text_groups(Y, captions)
    # retrieval ranks the fold's distinct captions; with mostly repeated captions (class templates) the "correct
    # caption" is the class's and retrieval would be classification again: n/a below half distinct
    distinct_captions = captions is not None and len(set(captions)) >= RETRIEVAL_MIN_DISTINCT * n

    # separate streams: the unseen class groups must not depend on how many draws a map consumes
    group_rng = np.random.default_rng(seed)
    fit_rng = np.random.default_rng([seed, 1])
    fitter = _FITTERS[method]
    map_info: dict[str, Any] = {"method": method, "seen": [], "unseen": []}
    if held_out_groups is None:
        class_groups = outcome_groups(present, group_rng)
        excluded: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(class_groups)
        map_info["unseen_groups_from"] = "seed"
    else:
        class_groups, excluded, skipped = _explicit_groups(held_out_groups, present, n_classes)
        map_info["unseen_groups_from"] = "dataset"
        map_info["skipped_groups"] = skipped

    seen_correct = np.zeros(n, dtype=bool)
    top1 = np.zeros(n, dtype=bool)
    top5 = np.zeros(n, dtype=bool)
    retrieval_chance1, retrieval_chance5 = np.zeros(n), np.zeros(n)
    probe_v = np.zeros(n, dtype=bool)
    probe_l = np.zeros(n, dtype=bool)
    outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in outer.split(X, y):
        prep = _Preprocess.fit(X[train], Y[train])
        Xtr, Ytr, Xte = prep.vision(X[train]), prep.text(Y[train]), prep.vision(X[test])
        inner = _stratified_inner(y[train], seed)
        mapping, info = fitter(Xtr, Ytr, inner, groups[train], fit_rng)
        map_info["seen"].append(info)
        mapped = _l2(mapping(Xte))
        seen_correct[test] = _classify(mapped, prep.prototypes(T)) == y[test]
        if distinct_captions:
            assert captions is not None
            first: dict[str, int] = {}
            own = np.array([first.setdefault(captions[i], len(first)) for i in test])
            candidates = prep.text(Y[test][np.unique(own, return_index=True)[1]])
            ranks = _rank_of_own(mapped @ candidates.T, own)
            top1[test], top5[test] = ranks < 1, ranks < 5
            retrieval_chance1[test] = 1.0 / len(first)
            retrieval_chance5[test] = min(5, len(first)) / len(first)
        probe_v[test] = _linear_probe(Xtr, y[train], Xte) == y[test]
        probe_l[test] = _linear_probe(Ytr, y[train], prep.text(Y[test])) == y[test]

    unseen_correct = np.zeros(n, dtype=bool)
    unseen_chance = np.zeros(n)
    tested = np.zeros(n, dtype=bool)
    map_info["unseen_class_groups"] = [sorted(int(c) for c in g) for g in class_groups]
    group_scores: list[dict[str, Any]] = []
    for held_out, exclude in zip(class_groups, excluded, strict=True):
        test_mask = np.isin(y, held_out)
        train = np.flatnonzero(~test_mask & ~np.isin(y, exclude))
        test = np.flatnonzero(test_mask)
        if np.unique(y[train]).size < 2:
            raise InvalidSettings(
                f"held-out group {sorted(int(c) for c in held_out)} leaves {np.unique(y[train]).size} class(es) "
                "to fit its map on; the unseen-class test needs ≥ 2"
            )
        prep = _Preprocess.fit(X[train], Y[train])
        inner = _class_disjoint_inner(y[train], group_rng)
        mapping, info = fitter(prep.vision(X[train]), prep.text(Y[train]), inner, groups[train], fit_rng)
        map_info["unseen"].append(info)
        mapped = _l2(mapping(prep.vision(X[test])))
        candidates = np.sort(held_out)
        predicted = candidates[_classify(mapped, prep.prototypes(T[candidates]))]
        unseen_correct[test] = predicted == y[test]
        unseen_chance[test] = 1.0 / candidates.size
        tested[test] = True
        group_scores.append(group_score(candidates, y[test], predicted))

    uniform = np.full(n, 1.0 / n_classes)
    figures: dict[str, dict[str, Any]] = {
        "seen": _figure(seen_correct, uniform, y),
        # explicit groups may leave classes untested (shapes: 14 of 48); the figure counts the tested pairs only
        "unseen": _figure(unseen_correct[tested], unseen_chance[tested], y[tested]),
        "linear_probe_vision": _figure(probe_v, uniform, y),
        "linear_probe_language": _figure(probe_l, uniform, y),
    }
    if distinct_captions:
        figures["retrieval_top1"] = _figure(top1, retrieval_chance1, y)
        figures["retrieval_top5"] = _figure(top5, retrieval_chance5, y)
    else:
        reason = (
            "no captions given"
            if captions is None
            else f"captions repeat ({len(set(captions))} distinct of {n}, fewer than half): the correct caption is "
            "the class's, not the pair's"
        )
        figures["retrieval_top1"], figures["retrieval_top5"] = _not_applicable(reason), _not_applicable(reason)

    group_means = kind_means(group_scores, held_out_groups)
    unseen = figures["unseen"]
    outcome = decide_outcome(np.array([g["s_g"] for g in group_scores]), failure_threshold, outcome_alpha, seed)
    return {
        "method": method,
        "n": n,
        "n_classes": n_classes,
        "folds": folds,
        "unseen_folds": len(class_groups),
        "seed": seed,
        "failure_threshold": outcome["failure_threshold"],
        "outcome_alpha": outcome["outcome_alpha"],
        "n_distinct_captions": None if captions is None else len(set(captions)),
        "seen_accuracy": figures["seen"]["accuracy"],
        "unseen_accuracy": unseen["accuracy"],
        "retrieval_top1": figures["retrieval_top1"]["accuracy"],
        "retrieval_top5": figures["retrieval_top5"]["accuracy"],
        "linear_probe_vision": figures["linear_probe_vision"]["accuracy"],
        "linear_probe_language": figures["linear_probe_language"]["accuracy"],
        "chance": {name: figures[name]["chance"] for name in FIGURES},
        "figures": {name: figures[name] for name in FIGURES},
        "alignment_score": outcome["alignment_score"],
        "group_scores": group_scores,
        "group_means": group_means,
        "n_groups": outcome["n_groups"],
        "p_above": outcome["p_above"],
        "p_below": outcome["p_below"],
        "sign_flip": outcome["sign_flip"],
        "outcome": outcome["outcome"],
        "outcome_reason": outcome["outcome_reason"],
        "failed": outcome["failed"],
        "map": map_info,
    }


# --- outcome, three-way (§7) ----------------------------------------------------------------------------


def _explicit_groups(
    groups: Sequence[AbcMapping[str, Any]], present: np.ndarray, n_classes: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]]]:
    """Checked explicit groups: (classes of each group, present in the sample; classes excluded from its fit;
    the groups skipped for having < 2 classes in the sample, with the reason)."""
    classes_of, excluded, skipped = [], [], []
    used: set[int] = set()
    for index, group in enumerate(groups):
        members = [int(c) for c in group["classes"]]
        exclude = [int(c) for c in group.get("exclude", ())]
        if len(set(members)) != len(members) or any(not 0 <= c < n_classes for c in members + exclude):
            raise ValueError(f"held-out group {index} {members} must hold distinct classes in [0, {n_classes})")
        if used & set(members):
            raise ValueError(f"held-out group {index} {members} shares classes with an earlier group")
        used |= set(members)
        kept = np.array([c for c in members if c in set(present.tolist())], dtype=np.int64)
        if kept.size < 2:
            skipped.append({"classes": members, "reason": f"{kept.size} of its classes are in the sample"})
            continue
        classes_of.append(kept)
        excluded.append(np.array(sorted(set(exclude) - set(members)), dtype=np.int64))
    if len(classes_of) < 2:
        raise InvalidSettings(
            f"{len(classes_of)} held-out group(s) have ≥ 2 classes in the sample; the unseen-class test needs ≥ 2 "
            "groups: raise N"
        )
    return classes_of, excluded, skipped


# --- features -------------------------------------------------------------------------------------------


def _l2(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class _Preprocess:
    """φ_v, φ_l and t̃_c of one fold: normalise, subtract the training mean μ, normalise."""

    mu_v: np.ndarray  # (d_v,)
    mu_l: np.ndarray  # (d_l,)

    @classmethod
    def fit(cls, X: np.ndarray, Y: np.ndarray) -> _Preprocess:
        return cls(_l2(X).mean(axis=0), _l2(Y).mean(axis=0))

    def vision(self, X: np.ndarray) -> np.ndarray:
        return _l2(_l2(X) - self.mu_v)

    def text(self, Y: np.ndarray) -> np.ndarray:
        return _l2(_l2(Y) - self.mu_l)

    def prototypes(self, T: np.ndarray) -> np.ndarray:
        return _l2(T - self.mu_l)


def _classify(mapped: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """argmax_c cos(W φ_v(e), t̃_c); both sides unit-norm. (n, d_l), (C, d_l) → (n,) int."""
    classes: np.ndarray = np.argmax(mapped @ prototypes.T, axis=1)
    return classes


def _rank_of_own(similarity: np.ndarray, own: np.ndarray) -> np.ndarray:
    """(n, u) image × distinct caption similarity, ``own`` (n,) each image's caption → (n,) rank of it (0 = first).

    Ties count against the image, so a constant map never scores.
    """
    mine = similarity[np.arange(similarity.shape[0]), own][:, None]
    ranks: np.ndarray = np.count_nonzero(similarity >= mine, axis=1) - 1
    return ranks


def _linear_probe(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray) -> np.ndarray:
    scaler = StandardScaler().fit(Xtr)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(Xtr), ytr)
    predicted: np.ndarray = clf.predict(scaler.transform(Xte))
    return predicted


def _text_groups(Y: np.ndarray, captions: Sequence[str] | None) -> np.ndarray:
    """(N,) int id of each pair's text: the same caption (or, without captions, the same embedding)."""
    if captions is not None:
        _, ids = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    else:
        _, ids = np.unique(Y, axis=0, return_inverse=True)
    return ids.reshape(-1)


# --- inner folds --------------------------------------------------------------------------------------

Splits = list[tuple[np.ndarray, np.ndarray]]


def _stratified_inner(y: np.ndarray, seed: int) -> Splits:
    k = min(RIDGE_INNER_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    if k < 2:
        return []
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(y.size), y))


def _class_disjoint_inner(y: np.ndarray, rng: np.random.Generator) -> Splits:
    classes = np.unique(y)
    k = min(RIDGE_INNER_FOLDS, classes.size)
    if k < 2:
        return []
    splits = []
    for held in np.array_split(rng.permutation(classes), k):
        mask = np.isin(y, held)
        splits.append((np.flatnonzero(~mask), np.flatnonzero(mask)))
    return splits


# --- maps W ---------------------------------------------------------------------------------------------

Mapping = Callable[[np.ndarray], np.ndarray]
Fitter = Callable[[np.ndarray, np.ndarray, Splits, np.ndarray, np.random.Generator], tuple[Mapping, dict[str, Any]]]


def _fit_ridge(
    X: np.ndarray, Y: np.ndarray, inner: Splits, groups: np.ndarray, rng: np.random.Generator
) -> tuple[Mapping, dict[str, Any]]:
    """Ridge ``W_λ = (XᵀX + λI)⁻¹XᵀY = Xᵀ(XXᵀ + λI)⁻¹Y``; λ minimises the inner-CV squared error.

    Solved in the dual through one eigendecomposition ``XXᵀ = U diag(μ) Uᵀ`` per (inner) training set, so all
    λ of the grid cost one (n, n) eigh instead of one (n, d_v) SVD each, with d_v up to a few thousand.
    """
    G = X @ X.T  # (n, n)
    errors = np.zeros(RIDGE_LAMBDAS.size)
    for tr, va in inner:
        mu, U = np.linalg.eigh(G[np.ix_(tr, tr)])
        A, B = G[np.ix_(va, tr)] @ U, U.T @ Y[tr]
        for j, lam in enumerate(RIDGE_LAMBDAS):
            errors[j] += np.sum(((A / (np.clip(mu, 0, None) + lam)) @ B - Y[va]) ** 2)
    lam = float(RIDGE_LAMBDAS[int(np.argmin(errors))]) if inner else 1.0
    mu, U = np.linalg.eigh(G)
    W = X.T @ ((U / (np.clip(mu, 0, None) + lam)) @ (U.T @ Y))  # (d_v, d_l)
    return (lambda Z: Z @ W), {"lambda": lam}


def _principal_axes(X: np.ndarray, r: int, *, center: bool = True) -> np.ndarray:
    """(d, r) orthonormal top-r principal axes of X (n, d), from the eigh of the smaller of XXᵀ and XᵀX."""
    Z = X - X.mean(axis=0) if center else X
    n, d = Z.shape
    if d <= n:
        _, V = np.linalg.eigh(Z.T @ Z)
        return V[:, ::-1][:, :r]
    mu, U = np.linalg.eigh(Z @ Z.T)
    mu, U = mu[::-1][:r], U[:, ::-1][:, :r]
    axes: np.ndarray = Z.T @ U / np.sqrt(np.clip(mu, 1e-300, None))
    return axes


def _fit_procrustes(
    X: np.ndarray, Y: np.ndarray, inner: Splits, groups: np.ndarray, rng: np.random.Generator
) -> tuple[Mapping, dict[str, Any]]:
    """Orthogonal Q between the top-r principal coordinates of both sides, r = min(d_v, d_l, n − 1)."""
    r = max(1, min(X.shape[1], Y.shape[1], X.shape[0] - 1))
    Pv, Pl = _principal_axes(X, r), _principal_axes(Y, r)  # (d_v, r), (d_l, r)
    U, _, Vt = np.linalg.svd((X @ Pv).T @ (Y @ Pl))
    W = Pv @ (U @ Vt) @ Pl.T  # (d_v, d_l)
    return (lambda Z: Z @ W), {"dim": r}


def _fit_infonce(
    X: np.ndarray, Y: np.ndarray, inner: Splits, groups: np.ndarray, rng: np.random.Generator
) -> tuple[Mapping, dict[str, Any]]:
    """Linear map trained on the image → text InfoNCE loss over the distinct training texts.

    Loss ``−(1/n) Σ_i log softmax_j(cos(W x_i, t_j)/τ)[g_i]`` with t_j the distinct texts and g_i pair i's
    text; W acts on the coordinates of x in the training span (an orthonormal basis from the SVD of X),
    initialised from N(0, 1/r) by ``rng``, optimised by full-batch Adam with an L2 penalty.
    """
    tau, steps, lr, decay = (INFONCE[k] for k in ("temperature", "steps", "lr", "weight_decay"))
    r = max(1, min(X.shape[1], X.shape[0] - 1, INFONCE_MAX_DIM))
    basis = _principal_axes(X, r, center=False).T  # (r, d_v)
    Xr = X @ basis.T  # (n, r)
    ids, first = np.unique(groups, return_index=True)
    targets = Y[first]  # (u, d_l) distinct texts
    target_of = np.searchsorted(ids, groups)  # (n,)
    n, r = Xr.shape
    W = rng.normal(scale=1.0 / math.sqrt(r), size=(r, Y.shape[1]))
    m, v = np.zeros_like(W), np.zeros_like(W)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    loss = math.nan
    for step in range(1, int(steps) + 1):
        Z = Xr @ W
        norms = np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12
        Zh = Z / norms
        logits = Zh @ targets.T / tau
        logits -= logits.max(axis=1, keepdims=True)
        P = np.exp(logits)
        P /= P.sum(axis=1, keepdims=True)
        loss = float(-np.mean(np.log(P[np.arange(n), target_of] + 1e-300)))
        P[np.arange(n), target_of] -= 1.0
        dZh = (P @ targets) / (tau * n)
        dZ = (dZh - Zh * np.sum(Zh * dZh, axis=1, keepdims=True)) / norms
        grad = Xr.T @ dZ + decay * W
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        W -= lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    full = basis.T @ W  # (d_v, d_l)
    return (lambda Z: Z @ full), {"final_loss": loss, "distinct_texts": int(ids.size), **INFONCE}


_FITTERS: dict[str, Fitter] = {"ridge": _fit_ridge, "procrustes": _fit_procrustes, "infonce": _fit_infonce}


# --- statistics -----------------------------------------------------------------------------------------


def _figure(correct: np.ndarray, chance: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    """Accuracy of (n,) bool outcomes against per-pair chance levels (n,), pairs clustered by class (n,) int.

    ``p_value``/``ci95`` treat the n pairs as independent (binomial, Wilson). Outcomes of pairs of one class
    are correlated (a map sends a whole class the same way), so ``n_effective = n / deff`` with the Kish
    design effect ``deff = 1 + (m₀ − 1) ρ``, ρ the one-way ANOVA intra-class correlation of the outcomes over
    classes (clipped to [0, 1]; 1 when every outcome is equal, the conservative case), and
    ``p_value_clustered`` / ``ci95_clustered`` are the same figures at that effective size.
    """
    n, k = int(correct.size), int(np.count_nonzero(correct))
    accuracy, mean_chance = k / n, float(np.mean(chance))
    if np.ptp(chance) < 1e-12:
        p_value = binomtest(k, n, float(chance[0]), alternative="greater").pvalue
    else:
        p_value = poisson_binomial_sf(k, chance)
    n_eff = n / design_effect(correct.astype(np.float64), classes)
    return {
        "status": "ok",
        "reason": None,
        "accuracy": accuracy,
        "correct": k,
        "n": n,
        "chance": mean_chance,
        "p_value": float(min(1.0, p_value)),
        "ci95": wilson_interval(accuracy, n),
        "n_effective": float(n_eff),
        "p_value_clustered": binomial_sf(accuracy * n_eff, n_eff, mean_chance),
        "ci95_clustered": wilson_interval(accuracy, n_eff),
    }


def _not_applicable(reason: str) -> dict[str, Any]:
    return {
        "status": "n/a",
        "reason": reason,
        "accuracy": None,
        "correct": None,
        "n": 0,
        "chance": None,
        "p_value": None,
        "ci95": None,
        "n_effective": None,
        "p_value_clustered": None,
        "ci95_clustered": None,
    }


def _validate(
    E_v: np.ndarray,
    E_l: np.ndarray,
    labels: np.ndarray,
    prototypes: np.ndarray,
    captions: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(E_v, dtype=np.float64)
    Y = np.asarray(E_l, dtype=np.float64)
    T = np.asarray(prototypes, dtype=np.float64)
    y = np.asarray(labels)
    if X.ndim != 2 or Y.ndim != 2 or T.ndim != 2:
        raise ValueError(f"E_v {X.shape}, E_l {Y.shape} and prototypes {T.shape} must be 2-D")
    if X.shape[0] != Y.shape[0] or y.shape != (X.shape[0],):
        raise ValueError(f"E_v {X.shape}, E_l {Y.shape} and labels {y.shape} must hold the same N pairs")
    if T.shape[1] != Y.shape[1]:
        raise ValueError(f"prototypes {T.shape} must live in the text space of E_l (d_l = {Y.shape[1]})")
    if captions is not None and len(captions) != X.shape[0]:
        raise ValueError(f"{len(captions)} captions for {X.shape[0]} pairs")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= T.shape[0]:
        raise ValueError(f"labels must be integers in [0, C) with C = {T.shape[0]} prototypes")
    for name, arr in (("E_v", X), ("E_l", Y), ("prototypes", T)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has non-finite entries")
    return X, Y, y.astype(np.int64), T
