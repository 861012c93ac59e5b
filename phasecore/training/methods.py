"""The four methods of the paper's Table 2 (issue 22), as they are defined here (docs/phase-aware.md gives the
reasons; where the paper is vague the choice is this project's).

Every method acts on the towers' learning rates only; the projection heads always train at η0. A tower's rate is
``η0 · rate(side)``:

- ``fixed`` (the baseline): rate 1, nothing measured.
- ``adaptive``: ``η(t) = η0 · S_NTK(t)`` per tower, S_NTK measured (METRICS §3, ``measure_s_ntk``) on the tower as
  it is every ``every`` steps (step 0 included) and held until the next measurement. A probe that diverges keeps
  the rate it had.
- ``regulariser``: the paper's ``L + λ|S_NTK^V − S_NTK^L|`` with the penalty not added to the loss (S_NTK has no
  cheap gradient) but enforced through each tower's *effective output scale* α (below): every ``every`` steps both
  towers' S_NTK are measured at their current α and ``log10 α_V −= λ·(S_V − S_L)/2``, ``log10 α_L += λ·(S_V −
  S_L)/2`` (a gradient step on the penalty with the surrogate slope ``∂S/∂log10 α = 1``; S rises with α), clipped
  to ``[alpha_min, alpha_max]``; rate ``1/α``. A probe that diverges counts as S = 0 (the most chaotic).
- ``compatible``: before training, each tower's α is searched (``search_output_scale``) so that S_NTK of ``α·f``
  is nearest ``target`` (0.6); then fixed, rate ``1/α``, nothing measured during training.

**Effective output scale α.** A tower with output multiplier α, ``α·f(x)``, trains here as the zoo trains an
``out=α`` tower (docs/zoo.md): its outputs are standardised before the head, so α cancels in the forward pass,
and its Adam learning rate is divided by α, so its weights move O(1/α) from where they start. That is what the
§3 probe of ``α·f`` measures (its step ``η = 1/λ_max`` moves θ by O(1/α)), so the phase S_NTK(α·f) is the phase of
the training that follows. Small α: a richer, less stable tower; large α: a lazier one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from phasecore.errors import EngineError
from phasecore.kernels.stability import stability_probe
from phasecore.sources.base import Inputs
from phasecore.training import METHODS as METHODS  # re-exported: the methods' names live with the package

SIDES: tuple[str, ...] = ("vision", "language")
#: the paper's Table 2 ordering, best first (compatible init > regulariser > adaptive > fixed)
PAPER_ORDER: tuple[str, ...] = ("compatible", "regulariser", "adaptive", "fixed")

#: (side, α) -> S_NTK of α·tower at this moment of training, None when the probe diverged
MeasureFn = Callable[[str, float], "float | None"]


@dataclass(frozen=True)
class ProbeSettings:
    """The S_NTK probe of METRICS §3 at a small size: ``subset`` = n_s training inputs of the tower's own fold (a
    seeded draw, the same at every measurement of a run), ``steps`` = T, ``probes`` = M Gaussian output probes,
    exact inner products, step size c = 1. S_NTK compares only at equal (n_s, T, c), so these values compare with
    each other, not with a screening's (n_s = 128)."""

    subset: int = 32
    steps: int = 10
    probes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.subset < 4 or self.steps < 1 or self.probes < 1:
            raise ValueError(f"probe needs subset ≥ 4, steps ≥ 1, probes ≥ 1, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OutputScaled(nn.Module):
    """``α · inner(...)``: the tower with output multiplier α (the zoo's ``out``), for the probe."""

    def __init__(self, inner: nn.Module, alpha: float) -> None:
        super().__init__()
        self.inner = inner
        self.alpha = float(alpha)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = self.inner(*args, **kwargs)
        return out if self.alpha == 1.0 else self.alpha * out


def measure_s_ntk(
    module: nn.Module,
    inputs: Inputs,
    *,
    alpha: float = 1.0,
    probe: ProbeSettings | None = None,
    params: Collection[str] | None = None,
) -> tuple[float | None, str | None]:
    """S_NTK (METRICS §3, uncentered, c = 1) of ``α · module`` on ``inputs`` with ``stability_probe`` at the
    probe's (n_s, T, M), θ = ``params`` (names in ``module``; None: all). Runs on a deep copy: the caller's module
    is never touched. Returns (S_NTK, None), or (None, reason) when the probe diverged (its kernel or loss went
    non-finite: a step η = 1/λ_max that the network's curvature turns into a blow-up)."""
    probe = probe or ProbeSettings()
    model = OutputScaled(copy.deepcopy(module), alpha)
    selected = None if params is None else [f"inner.{name}" for name in params]
    try:
        result = stability_probe(
            model, inputs, probes=probe.probes, method="exact", seed=probe.seed, subset=probe.subset,
            steps=probe.steps, params=selected,
        )  # fmt: skip
    except (ValueError, EngineError) as error:  # a Gram or loss with non-finite entries after the probe's steps
        return None, f"diverged: {error}"
    if not math.isfinite(result.s_ntk):
        return None, "diverged: S_NTK is not finite"
    return float(result.s_ntk), None


def search_output_scale(
    measure: Callable[[float], float | None],
    *,
    target: float = 0.6,
    tolerance: float = 0.05,
    alpha_min: float = 0.01,
    alpha_max: float = 10.0,
    per_decade: int = 2,
    refine: int = 6,
) -> dict[str, Any]:
    """The output multiplier α whose S_NTK(α·f) = ``measure(α)`` is nearest ``target`` (compatible init).

    From α = 1, steps of ``10^(1/per_decade)`` go down (when S(1) ≥ target: the tower is lazier than the target)
    or up, within ``[alpha_min, alpha_max]``, until S crosses the target; the bracket is then bisected ``refine``
    times in log α. S is not monotone in α to better than its noise, and a probe may diverge (counted as below the
    target), so the answer is chosen among the measured α with a finite S: of those whose S lies within
    ``tolerance`` of the S nearest the target (equal to it within the probe's noise), the α closest to 1 in log
    (the smallest change of rate), whether or not a bracket was found. Returns {alpha, s_ntk, reached (|S − target| ≤
    tolerance), bracketed, trace: [{alpha, s_ntk}] in the order measured}."""
    if not 0 < alpha_min <= 1 <= alpha_max or per_decade < 1 or refine < 0:
        raise ValueError("need alpha_min ≤ 1 ≤ alpha_max, both > 0, per_decade ≥ 1, refine ≥ 0")
    trace: list[dict[str, Any]] = []

    def probe(alpha: float) -> float | None:
        s = measure(alpha)
        trace.append({"alpha": alpha, "s_ntk": s})
        return s

    def below(s: float | None) -> bool:
        return s is None or s < target

    factor = 10 ** (1 / per_decade)
    alpha = 1.0
    going_down = not below(probe(alpha))
    bracket: tuple[float, float] | None = None  # (α with S below the target, α with S above it)
    while True:
        nxt = alpha / factor if going_down else alpha * factor
        if nxt < alpha_min * (1 - 1e-9) or nxt > alpha_max * (1 + 1e-9):
            break
        if below(probe(nxt)) == going_down:
            bracket = (nxt, alpha) if going_down else (alpha, nxt)
            break
        alpha = nxt
    if bracket is not None:
        low, high = bracket
        for _ in range(refine):
            middle = math.sqrt(low * high)
            if below(probe(middle)):
                low = middle
            else:
                high = middle
    finite = [t for t in trace if t["s_ntk"] is not None]
    if not finite:
        return {"alpha": 1.0, "s_ntk": None, "reached": False, "bracketed": False, "trace": trace}
    nearest = min(finite, key=lambda t: abs(t["s_ntk"] - target))["s_ntk"]
    near = [t for t in finite if abs(t["s_ntk"] - nearest) <= tolerance]
    best = min(near, key=lambda t: (abs(math.log10(t["alpha"])), abs(t["s_ntk"] - target)))
    return {
        "alpha": best["alpha"],
        "s_ntk": best["s_ntk"],
        "reached": abs(best["s_ntk"] - target) <= tolerance,
        "bracketed": bracket is not None,
        "trace": trace,
    }


@dataclass(frozen=True)
class MethodSpec:
    """One method of Table 2 and its knobs (module docstring): ``every`` (steps between S_NTK measurements,
    adaptive and regulariser), ``lam`` (the regulariser's λ: log10 α moved per unit of phase gap, split between
    the towers), ``target`` and ``tolerance`` (compatible init's S_NTK), ``alpha_min``/``alpha_max`` (the range of
    α, compatible and regulariser), ``per_decade`` and ``refine`` (the search's grid and bisection steps)."""

    name: str = "fixed"
    every: int = 32
    lam: float = 2.0
    target: float = 0.6
    tolerance: float = 0.05
    alpha_min: float = 0.01
    alpha_max: float = 10.0
    per_decade: int = 2
    refine: int = 6

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method {self.name!r} is not one of {', '.join(METHODS)}")
        if self.every < 1 or self.lam < 0 or not 0 < self.target < 1:
            raise ValueError("every must be ≥ 1, lam ≥ 0 and target in (0, 1)")
        if not 0 < self.alpha_min <= 1 <= self.alpha_max:
            raise ValueError("need 0 < alpha_min ≤ 1 ≤ alpha_max")

    def to_dict(self) -> dict[str, Any]:
        """The knobs that this method reads (the others do not change its run, and stay out of its cache key)."""
        used = {
            "fixed": (),
            "adaptive": ("every",),
            "regulariser": ("every", "lam", "alpha_min", "alpha_max"),
            "compatible": ("target", "tolerance", "alpha_min", "alpha_max", "per_decade", "refine"),
        }[self.name]
        return {"name": self.name, **{key: getattr(self, key) for key in used}}

    def build(self) -> Method:
        kinds: dict[str, type[Method]] = {
            "fixed": Method, "adaptive": Adaptive, "regulariser": Regulariser, "compatible": Compatible,
        }  # fmt: skip
        return kinds[self.name](self)


class Method:
    """The fixed learning rate (the baseline), and the interface of the others: ``start`` once before the first
    step, ``update`` before every step where ``measures_at`` says so, ``rate(side)`` the tower's multiplier of η0."""

    def __init__(self, spec: MethodSpec) -> None:
        self.spec = spec
        self.alpha = {side: 1.0 for side in SIDES}
        self.multiplier = {side: 1.0 for side in SIDES}
        self.s_ntk: dict[str, float | None] = {side: None for side in SIDES}
        self.search: dict[str, dict[str, Any]] = {}

    def start(self, measure: MeasureFn) -> None:
        """Before the first step (compatible init's search)."""

    def measures_at(self, step: int) -> bool:
        return False

    def update(self, step: int, measure: MeasureFn) -> None:
        """Before step ``step`` when ``measures_at(step)``."""

    def rate(self, side: str) -> float:
        return self.multiplier[side]

    def state(self) -> dict[str, Any]:
        return {
            "alpha": dict(self.alpha),
            "rate": dict(self.multiplier),
            "s_ntk": dict(self.s_ntk),
            **({"search": self.search} if self.search else {}),
        }


class _Periodic(Method):
    """A method that measures every ``spec.every`` steps, step 0 included."""

    def measures_at(self, step: int) -> bool:
        return step % self.spec.every == 0


class Adaptive(_Periodic):
    """η(t) = η0 · S_NTK(t), per tower."""

    def update(self, step: int, measure: MeasureFn) -> None:
        for side in SIDES:
            s = measure(side, 1.0)
            if s is not None:  # a diverged probe keeps the previous rate
                self.s_ntk[side] = s
                self.multiplier[side] = min(max(s, 0.0), 1.0)


class Regulariser(_Periodic):
    """The phases pulled together through each tower's effective output scale (module docstring)."""

    def update(self, step: int, measure: MeasureFn) -> None:
        for side in SIDES:
            self.s_ntk[side] = measure(side, self.alpha[side])
        s_v, s_l = (self.s_ntk[side] or 0.0 for side in SIDES)  # diverged: the most chaotic
        shift = self.spec.lam * (s_v - s_l) / 2
        low, high = math.log10(self.spec.alpha_min), math.log10(self.spec.alpha_max)
        for side, sign in (("vision", -1.0), ("language", 1.0)):
            log_alpha = min(max(math.log10(self.alpha[side]) + sign * shift, low), high)
            self.alpha[side] = 10**log_alpha
            self.multiplier[side] = 1.0 / self.alpha[side]


class Compatible(Method):
    """Each tower started at S_NTK ≈ target through its output scale α, trained at rate 1/α."""

    def start(self, measure: MeasureFn) -> None:
        spec = self.spec
        for side in SIDES:

            def at(alpha: float, side: str = side) -> float | None:
                return measure(side, alpha)

            found = search_output_scale(
                at, target=spec.target, tolerance=spec.tolerance, alpha_min=spec.alpha_min,
                alpha_max=spec.alpha_max, per_decade=spec.per_decade, refine=spec.refine,
            )  # fmt: skip
            self.search[side] = found
            self.alpha[side] = float(found["alpha"])
            self.s_ntk[side] = found["s_ntk"]
            self.multiplier[side] = 1.0 / self.alpha[side]
