"""Plan the compute a claim needs: the (R, K, S) that detects a given effect at least cost.

    python -m fairskin plan [--preset P] [--config FILE] [key=value ...] --endpoint E --mde M
        [--power 0.8] [--budget-hours H] [--gpus N] [--gpu-figures FILE] [--method t|normal] [--json]

Design and cost
---------------
One endpoint's paired difference (variant - baseline, the endpoint's units) is measured in a nested
design: R generator repeats (one fine-tune of every variant each), K pools per repeat (sampling
seeds of the same fine-tuned weights), S classifier seeds per pool (classifier endpoints only;
generation endpoints have S = 1). With the variance components sigma2_ft, sigma2_pool, sigma2_cls
(endpoint units squared; :mod:`fairskin.metrics.components` estimates them) a repeat's averaged
difference has variance v(K, S) = sigma2_ft + sigma2_pool / K + sigma2_cls / (K S), and the mean
over R repeats has var_of_mean = v(K, S) / R.

The study's cost is C(R, K, S) = R (c_ft + K (c_pool + S c_cls)) seconds, where (:class:`UnitCosts`)
c_ft is the wall time of one repeat's fine-tunes, c_pool of one pool per variant (generate and
evaluate), c_cls of one (repeat, pool, seed) cell's classifier runs (every variant x downstream
mode of the config's tune space), each over all of the configured variants, since a study runs
them all.

A two-sided test at level alpha with power 1 - beta detects a true difference M when, in the
normal approximation, var_of_mean <= V0 = (M / (z_{1-alpha/2} + z_{power}))^2; the exact version
is the paired t-test over R repeats: MDE(sd = sqrt(v(K, S)), n = R) <= M with the noncentral-t
power equation of :func:`fairskin.metrics.verdicts.mde`. alpha is the family's first (strictest)
Holm level, report.alpha / m with m the number of declared primary endpoints (report.primary):
the level at which the family's smallest p-value is judged.

Closed form (:func:`closed_form`; the classic optimum of a nested design)
------------------------------------------------------------------------
For any (K, S) the cheapest R meeting the constraint is R = v(K, S) / V0, so the least cost is
C = (per-repeat cost) x v / V0 and (K, S) minimise the product, independent of R, M and alpha::

    P(K, S) = (c_ft + K c_pool + K S c_cls) (sigma2_ft + sigma2_pool / K + sigma2_cls / (K S)).

By Cauchy-Schwarz P >= (sqrt(c_ft sigma2_ft) + sqrt(c_pool sigma2_pool) + sqrt(c_cls sigma2_cls))^2
with equality when the three cost terms are proportional to the three variance terms, term by
term: c_ft / sigma2_ft = K^2 c_pool / sigma2_pool = (K S)^2 c_cls / sigma2_cls, i.e.::

    K* = sqrt((c_ft / c_pool) (sigma2_pool / sigma2_ft)),   S* = sqrt((c_pool / c_cls) (sigma2_cls / sigma2_pool)),

equivalently K* = sqrt(c_ft (sigma2_pool + sigma2_cls / S*) / ((c_pool + S* c_cls) sigma2_ft)), the
one-level optimum with the pool's classifiers inside its cost and variance (at S = S* the ratios
S* c_cls / c_pool and sigma2_cls / (S* sigma2_pool) are equal, so the two forms agree); then
R* = v(K*, S*) / V0. In u = log K, w = log K S the problem is convex (log P is a sum of two
log-sum-exps), so with the bounds K >= 1 and S >= 1 (K S >= K) the optimum is the unbounded one
when feasible, else the least P among the optima on the faces: S = 1 (pool and classifier merged:
K = sqrt(c_ft (sigma2_pool + sigma2_cls) / ((c_pool + c_cls) sigma2_ft))), K = 1
(S = sqrt((c_ft + c_pool) sigma2_cls / (c_cls (sigma2_ft + sigma2_pool)))), and K = S = 1. So a
zero component gives 1 at its level (sigma2_pool = 0: K = 1; sigma2_cls = 0: S = 1).

A paired t-test needs R >= 3 repeats (``MIN_R``; fewer give no verdict). When R* < 3 (a small
sigma2_ft, e.g. 0) R is fixed at 3 and the cost K c_pool + K S c_cls is minimised subject to
sigma2_pool / K + sigma2_cls / (K S) <= 3 V0 - sigma2_ft: by Lagrange K = lambda sqrt(sigma2_pool /
c_pool), K S = lambda sqrt(sigma2_cls / c_cls), lambda = (sqrt(sigma2_pool c_pool) + sqrt(sigma2_cls
c_cls)) / (3 V0 - sigma2_ft), with the same faces.

Plan (:func:`plan`)
-------------------
For each candidate (K, S) the integer plan takes the smallest R meeting the constraint and keeps
the cheapest design. Under the normal approximation the candidates are the integer neighbours of
the closed form (floor - 1 .. ceil + 1, at least 1); :func:`brute_force` searches the whole integer
grid instead, and the tests check that the two agree within 1 %. Under the exact paired t-test
(the default) the t-distribution's price of few repeats moves the optimum where R is small (a
random search found the neighbours up to 20 % dearer at R < 15), so every K and S from 1 to
max(20, 2 x the closed form + 2) is tried. With a budget, :func:`smallest_mde`
gives the smallest MDE any (R, K, S) within it reaches.

Inputs, measured or assumed (:func:`measured_costs`, :func:`measured_components`, :func:`gpu_costs`)
----------------------------------------------------------------------------------------------------
Components: the newest ``<runs root>/**/variance_components.csv``. Unit costs: the latest finished
stage records ``<runs root>/stages/<stage>-<key>/_stage.json``: wall seconds per fine-tune, per
pool and per classifier trial at the concurrency they ran with (a stage's seconds over its units),
times the units per level in this config. Of each stage the latest record made with this config's
work settings is used, else the latest within 4x of them scaled linearly by the work (steps x
batch, images x sampling steps, epochs x count scale, pixels). A unit without such a record falls
back to a cost model (``HERE_MODEL``: README run 6, the study preset on 2 CPU cores, scaled the
same way) and is marked assumed. ``cost_gpu_hours``: the plan at ``paper`` scale on
one GPU, from ``benchmarks/gpu.py``'s figures where a file of them is found, else the README's
FLOP cost model (40 % MFU on an H100, assumed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MIN_R = 3  # fewest repeats with a paired t-test (fairskin.metrics.paired.MIN_N_TTEST)
MAX_R = 1000  # most repeats the plan considers (verdicts.repeats_for's default bound)
MAX_LEVEL = 1000  # most pools per repeat, or seeds per pool, the plan considers
STAGE_RECORD = "_stage.json"  # fairskin.pipeline.keyed.STAGE_RECORD (not imported: that module pulls in the engine)
COMPONENTS_FILE = "variance_components.csv"
GPU_FIGURES_FILE = "gpu_figures.jsonl"  # benchmarks/gpu.py's output saved under the runs root
Method = Literal["t", "normal"]

# Cost model on this machine where a stage has no record: README run 6 (study preset, 2 CPU cores, quiet;
# finetune 559 s for 4 fine-tuned variants x 3 repeats of 200 steps x 16 images; generate 670 s for 12
# sampled pools of 45 x 15 images x 20 steps (the 6 mixed pools cost next to nothing); evaluate 155 s for
# 18 pools of 675 images; tune 289 s for 18 trials of 8 epochs at count scale 0.05), all at 64 px.
HERE_MODEL = {
    "finetune_s": 559 / 12,
    "finetune_work": 200 * 16,
    "generate_s": 670 / 12,
    "generate_work": 675 * 20,
    "evaluate_s": 155 / 18,
    "evaluate_work": 675,
    "trial_s": 289 / 18,
    "trial_work": 8 * 0.05,
    "image_size": 64,
    "source": "README run 6 (study preset, 2 CPU cores)",
}
# Paper-scale FLOP cost model (README, "Paper scale: cost and running on a GPU cluster").
PAPER_FLOP = {
    "train_per_image": 2.41e12,
    "sample_per_image_step": 2 * 0.80e12,
    "vit_forward": 35e9,
    "classifier_images": 9_600,
    "peak": 989e12,
    "mfu": 0.40,
}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Components:
    """Variance components of one endpoint's paired difference, in the endpoint's units squared.

    sigma2_ft: between generator repeats (fine-tunes); sigma2_pool: between pools within a repeat;
    sigma2_cls: between classifier seeds within a pool (0 for generation endpoints). Each finite
    and >= 0 (:meth:`clean` maps NaN, a level merged into the one above, and negative estimates to
    0). R, K, S: the design they were measured on (None when unknown); source: where from.
    """

    sigma2_ft: float
    sigma2_pool: float = 0.0
    sigma2_cls: float = 0.0
    R: int | None = None
    K: int | None = None
    S: int | None = None
    source: str = ""

    def clean(self) -> Components:
        """The same with NaN and negative components set to 0."""
        fix = {k: (0.0 if not (v >= 0) else float(v)) for k, v in self.parts().items()}
        return Components(**fix, R=self.R, K=self.K, S=self.S, source=self.source)

    def parts(self) -> dict[str, float]:
        return {"sigma2_ft": self.sigma2_ft, "sigma2_pool": self.sigma2_pool, "sigma2_cls": self.sigma2_cls}

    def per_repeat(self, K: float, S: float) -> float:
        """v(K, S) = sigma2_ft + sigma2_pool / K + sigma2_cls / (K S): the variance of one repeat's
        averaged difference (endpoint units squared)."""
        return self.sigma2_ft + self.sigma2_pool / K + self.sigma2_cls / (K * S)

    def sd_per_repeat(self, K: float, S: float) -> float:
        """sqrt(v(K, S)), endpoint units: the spread the paired t-test over R repeats sees."""
        return math.sqrt(self.per_repeat(K, S))


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of each level of the design, over all of a study's variants.

    c_ft: one generator repeat's fine-tunes; c_pool: one pool per variant (generate + evaluate),
    its classifiers excluded; c_cls: one classifier seed of one pool (every variant x downstream
    mode). All > 0 (wall seconds here, or GPU-seconds at paper scale).
    """

    c_ft: float
    c_pool: float
    c_cls: float

    def __post_init__(self):
        for name in ("c_ft", "c_pool", "c_cls"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0 seconds, got {value}")

    def per_repeat(self, K: float, S: float) -> float:
        """Seconds of one repeat: c_ft + K (c_pool + S c_cls)."""
        return self.c_ft + K * (self.c_pool + S * self.c_cls)

    def total(self, R: float, K: float, S: float) -> float:
        """Seconds of the whole design: R (c_ft + K (c_pool + S c_cls))."""
        return R * self.per_repeat(K, S)


@dataclass(frozen=True)
class Design:
    """An integer design: R repeats, K pools per repeat, S seeds per pool; cost_seconds (in the
    costs' units); mde: the MDE it reaches (endpoint units) at the given alpha and power."""

    R: int
    K: int
    S: int
    cost_seconds: float
    mde: float


# --------------------------------------------------------------------------- power


def z_sum(alpha: float, power: float) -> float:
    """z_{1 - alpha/2} + z_{power}: the standardised MDE of a two-sided z-test (dimensionless)."""
    from scipy import stats  # here, so that `python -m fairskin` imports this module cheaply

    if not (0 < alpha < 1 and alpha < power < 1):
        raise ValueError(f"need 0 < alpha < power < 1, got alpha {alpha}, power {power}")
    return float(stats.norm.isf(alpha / 2) + stats.norm.ppf(power))


def target_variance(mde: float, alpha: float, power: float) -> float:
    """V0 = (mde / (z_{1-alpha/2} + z_power))^2: the largest var_of_mean that detects ``mde`` (endpoint
    units) in the normal approximation (endpoint units squared)."""
    if not (math.isfinite(mde) and mde > 0):
        raise ValueError(f"mde must be finite and > 0, got {mde}")
    return (mde / z_sum(alpha, power)) ** 2


def design_mde(
    components: Components, R: int, K: int, S: int, alpha: float, power: float, method: Method = "t"
) -> float:
    """MDE (endpoint units) of the design: ``verdicts.mde(sd_per_repeat(K, S), R, alpha, power)`` for
    ``method="t"`` (two-sided paired t over R repeats), sd / sqrt(R) x z-sum for ``"normal"``."""
    sd = components.sd_per_repeat(K, S)
    if method == "normal":
        return z_sum(alpha, power) * sd / math.sqrt(R)
    from fairskin.metrics.verdicts import mde

    return mde(sd, R, alpha, power)


def repeats_needed(
    components: Components,
    K: int,
    S: int,
    mde: float,
    alpha: float,
    power: float,
    method: Method = "t",
    r_min: int = MIN_R,
    max_R: int = MAX_R,
) -> int | None:
    """Smallest R in [r_min, max_R] whose design (R, K, S) reaches ``mde`` (endpoint units); None if none.

    ``"t"``: ``verdicts.repeats_for`` (smallest n with the paired t-test's MDE <= mde); ``"normal"``:
    ceil(v(K, S) / V0).
    """
    if method == "normal":
        need = components.per_repeat(K, S) / target_variance(mde, alpha, power)
        R = max(r_min, math.ceil(need * (1 - 1e-12)))
        return R if R <= max_R else None
    from fairskin.metrics.verdicts import repeats_for

    R = repeats_for(components.sd_per_repeat(K, S), mde, alpha, power, max_n=max_R)
    return None if R is None else max(r_min, R)


# --------------------------------------------------------------------------- closed form


def _least_product(a: float, b: float, c: float, A: float, B: float, C: float) -> tuple[float, float]:
    """(K, K S) minimising (a + b K + c KS)(A + B / K + C / KS) over 1 <= K <= KS (A > 0)."""

    def product(u: float, w: float) -> float:
        return (a + b * u + c * w) * (A + B / u + C / w)

    candidates = [(1.0, 1.0)]
    if B > 0 and C > 0:
        candidates.append((math.sqrt(a * B / (b * A)), math.sqrt(a * C / (c * A))))
    u = max(1.0, math.sqrt(a * (B + C) / ((b + c) * A)))  # face S = 1
    candidates.append((u, u))
    candidates.append((1.0, max(1.0, math.sqrt((a + b) * C / (c * (A + B))))))  # face K = 1
    feasible = [(u, w) for u, w in candidates if u >= 1 - 1e-12 and w >= u * (1 - 1e-12)]
    return min(feasible, key=lambda p: product(*p))


def _least_cost_at_r(b: float, c: float, B: float, C: float, T: float) -> tuple[float, float]:
    """(K, K S) minimising b K + c KS subject to B / K + C / KS <= T (T > 0), 1 <= K <= KS."""
    candidates = []
    if B > 0 and C > 0:
        lam = (math.sqrt(B * b) + math.sqrt(C * c)) / T
        candidates.append((lam * math.sqrt(B / b), lam * math.sqrt(C / c)))
    u = max(1.0, (B + C) / T)  # face S = 1
    candidates.append((u, u))
    if T > B:  # face K = 1
        candidates.append((1.0, max(1.0, C / (T - B))))
    candidates.append((1.0, 1.0))
    feasible = [
        (u, w) for u, w in candidates if u >= 1 - 1e-12 and w >= u * (1 - 1e-12) and B / u + C / w <= T * (1 + 1e-9)
    ]
    return min(feasible, key=lambda p: b * p[0] + c * p[1])


def closed_form(
    components: Components, costs: UnitCosts, mde: float, alpha: float, power: float, r_min: int = MIN_R
) -> tuple[float, float, float]:
    """The continuous least-cost (R, K, S) of the nested design, normal approximation (floats).

    ``components``: endpoint units squared (NaN / negative count as 0); ``costs``: seconds per level
    unit; ``mde``: endpoint units; ``alpha``: the two-sided test level (alpha / m for a family);
    ``power``: in (alpha, 1). Minimises R (c_ft + K (c_pool + S c_cls)) subject to var_of_mean <=
    (mde / (z_{1-alpha/2} + z_power))^2, K >= 1, S >= 1, R >= ``r_min``; see the module docstring for
    the derivation (K* = sqrt(c_ft sigma2_pool / (c_pool sigma2_ft)), S* = sqrt(c_pool sigma2_cls /
    (c_cls sigma2_pool)), R* = v(K*, S*) / V0, with their faces and the R = r_min case). All
    components 0: (r_min, 1, 1).
    """
    comp = components.clean()
    A, B, C = comp.sigma2_ft, comp.sigma2_pool, comp.sigma2_cls
    a, b, c = costs.c_ft, costs.c_pool, costs.c_cls
    V0 = target_variance(mde, alpha, power)
    if A > 0:
        u, w = _least_product(a, b, c, A, B, C)
        R = (A + B / u + C / w) / V0
        if R >= r_min:
            return R, u, w / u
    T = r_min * V0 - A  # what the pools and seeds may contribute at R = r_min (> 0 here)
    if B == 0 and C == 0:
        return float(r_min), 1.0, 1.0
    u, w = _least_cost_at_r(b, c, B, C, T)
    return float(r_min), u, w / u


# --------------------------------------------------------------------------- integer searches


def _cell(
    components: Components,
    costs: UnitCosts,
    K: int,
    S: int,
    mde: float,
    alpha: float,
    power: float,
    method: Method,
    r_min: int,
    max_R: int,
) -> Design | None:
    R = repeats_needed(components, K, S, mde, alpha, power, method, r_min, max_R)
    if R is None:
        return None
    return Design(R, K, S, costs.total(R, K, S), design_mde(components, R, K, S, alpha, power, method))


def _cheapest(designs: Iterable[Design | None]) -> Design | None:
    found = [d for d in designs if d is not None]
    # ties in cost: the smaller MDE, then fewer repeats
    return min(found, key=lambda d: (round(d.cost_seconds, 9), d.mde, d.R)) if found else None


def brute_force(
    components: Components,
    costs: UnitCosts,
    mde: float,
    alpha: float,
    power: float,
    max_R: int = 200,
    max_K: int = 20,
    max_S: int = 20,
    method: Method = "t",
    r_min: int = MIN_R,
) -> Design | None:
    """Least-cost integer design over K in 1..max_K, S in 1..max_S, R in r_min..max_R.

    For each (K, S) the smallest R whose design reaches ``mde`` (endpoint units): ``"t"``, the paired
    t-test's MDE(sd_per_repeat(K, S), R, alpha, power) <= mde (``fairskin.metrics.verdicts.mde``);
    ``"normal"``, var_of_mean <= V0. Cost in the units of ``costs`` (seconds). None when no cell
    reaches ``mde`` within max_R.
    """
    comp = components.clean()
    return _cheapest(
        _cell(comp, costs, K, S, mde, alpha, power, method, r_min, max_R)
        for K in range(1, max_K + 1)
        for S in range(1, max_S + 1)
    )


def _neighbours(x: float, limit: int) -> range:
    """Integers floor(x) - 1 .. ceil(x) + 1, at least 1, at most ``limit``."""
    low = max(1, math.floor(x) - 1)
    return range(low, max(low, min(limit, math.ceil(x) + 1)) + 1)


def smallest_mde(
    components: Components,
    costs: UnitCosts,
    budget_seconds: float,
    alpha: float,
    power: float,
    method: Method = "t",
    r_min: int = MIN_R,
    max_R: int = MAX_R,
    max_K: int = 20,
    max_S: int = 20,
) -> Design | None:
    """The design with the smallest MDE (endpoint units) whose cost (units of ``costs``) fits
    ``budget_seconds``: for each K <= max_K, S <= max_S the most repeats the budget pays for (at most
    max_R). None when not even (r_min, 1, 1) fits."""
    comp = components.clean()
    best = None
    for K in range(1, max_K + 1):
        for S in range(1, max_S + 1):
            R = min(max_R, math.floor(budget_seconds / costs.per_repeat(K, S) * (1 + 1e-12)))
            if R < r_min:
                continue
            d = Design(R, K, S, costs.total(R, K, S), design_mde(comp, R, K, S, alpha, power, method))
            if best is None or (d.mde, d.cost_seconds) < (best.mde, best.cost_seconds):
                best = d
    return best


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """A planned design and what it costs.

    R, K, S: repeats, pools per repeat, seeds per pool (None when no design reaches the target);
    mde_target / mde_achieved: endpoint units; power; alpha: the two-sided test level used (a
    family's first Holm level); method: "t" or "normal"; cost_seconds: in the units of the costs
    (wall seconds here); cost_hours_here: the same in hours; cost_gpu_hours: GPU-hours at paper
    scale (None without GPU costs); closed_form: the continuous optimum {R, K, S}; budget_mde: the
    smallest MDE within the budget with its {R, K, S, cost_hours, on} (None without a budget, or when
    nothing fits; ``on`` names the hours); measured: input name -> "measured" or "assumed: <why>"; notes: sentences.
    """

    R: int | None
    K: int | None
    S: int | None
    mde_target: float
    mde_achieved: float | None
    power: float
    alpha: float
    method: str
    cost_seconds: float | None
    cost_hours_here: float | None
    cost_gpu_hours: float | None
    closed_form: dict[str, float]
    budget_mde: dict[str, Any] | None = None
    measured: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def plan(
    components: Components,
    costs: UnitCosts,
    mde: float,
    alpha: float,
    power: float,
    budget_seconds: float | None = None,
    gpu_costs: UnitCosts | None = None,
    *,
    method: Method = "t",
    classifier_level: bool = True,
    budget_costs: UnitCosts | None = None,
    budget_on: str = "wall hours here",
    r_min: int = MIN_R,
    max_R: int = MAX_R,
) -> Plan:
    """The least-cost (R, K, S) reaching ``mde`` (endpoint units) at ``power`` and two-sided ``alpha``.

    ``components``: endpoint units squared; ``costs``: wall seconds per level unit on this machine;
    ``alpha``: the test's level (pass report.alpha / m for a family of m primary endpoints);
    ``budget_seconds``: a budget in the units of ``budget_costs`` (default ``costs``), for
    ``budget_mde`` (``budget_on`` names its hours); ``gpu_costs``: GPU-seconds per level unit at paper
    scale, for ``cost_gpu_hours``;
    ``method``: ``"t"`` (exact paired t over R) or ``"normal"``; ``classifier_level``: False for a
    generation endpoint (S = 1, sigma2_cls ignored). K and S are searched among the integer
    neighbours of :func:`closed_form`'s optimum (``"normal"``) or from 1 to max(20, twice it + 2)
    (``"t"``); R is the smallest that reaches ``mde``.
    """
    comp = components.clean()
    notes = []
    if not classifier_level:
        if comp.sigma2_cls > 0:
            notes.append("generation endpoint: no classifier level, sigma2_cls ignored (S = 1)")
        comp = Components(comp.sigma2_ft, comp.sigma2_pool, 0.0, comp.R, comp.K, comp.S, comp.source)
    if comp.per_repeat(1, 1) == 0:
        notes.append(
            "every variance component is 0: no spread, so the verdict would be untestable; "
            "measure the components with more repeats, pools or seeds"
        )
    R_cf, K_cf, S_cf = closed_form(comp, costs, mde, alpha, power, r_min)
    if method == "normal":
        K_range, S_range = _neighbours(K_cf, MAX_LEVEL), _neighbours(S_cf, MAX_LEVEL)
    else:
        # the t-test's price of few repeats moves the optimum off the normal closed form where R is small
        # (up to ~20 % dearer at R < 15 among its neighbours), so every K, S up to twice it is tried
        # (at most 200 each, plus the neighbours: a 200 x 200 grid takes seconds)
        K_range, S_range = (
            sorted(set(range(1, min(200, max(20, 2 * math.ceil(x) + 2)) + 1)) | set(_neighbours(x, MAX_LEVEL)))
            for x in (K_cf, S_cf)
        )
    if not classifier_level:
        S_range = range(1, 2)
    best = _cheapest(
        _cell(comp, costs, K, S, mde, alpha, power, method, r_min, max_R) for K in K_range for S in S_range
    )
    if best is None:
        notes.append(f"no design with R <= {max_R} repeats reaches MDE {mde:g} (closed form: R = {R_cf:.0f})")
    budget = None
    if budget_seconds is not None:
        on = budget_costs or costs
        found = smallest_mde(
            comp,
            on,
            budget_seconds,
            alpha,
            power,
            method,
            r_min,
            max_R,
            max_K=max(20, 2 * math.ceil(K_cf)),
            max_S=(max(20, 2 * math.ceil(S_cf)) if classifier_level else 1),
        )
        if found is None:
            notes.append(
                f"the budget pays for less than R = {r_min}, K = S = 1: {on.total(r_min, 1, 1) / 3600:.3g} {budget_on}"
            )
        else:
            budget = {
                "mde": found.mde,
                "R": found.R,
                "K": found.K,
                "S": found.S,
                "cost_hours": found.cost_seconds / 3600,
                "on": budget_on,
            }
            if best is not None and on.total(best.R, best.K, best.S) > budget_seconds:
                notes.append(
                    f"the target needs {on.total(best.R, best.K, best.S) / 3600:.3g} {budget_on}, over the "
                    f"budget of {budget_seconds / 3600:.3g}; within it the smallest MDE is {found.mde:.4g}"
                )
    if best is None:
        return Plan(
            None,
            None,
            None,
            mde,
            None,
            power,
            alpha,
            method,
            None,
            None,
            None,
            closed_form={"R": R_cf, "K": K_cf, "S": S_cf},
            budget_mde=budget,
            notes=notes,
        )
    return Plan(
        best.R,
        best.K,
        best.S,
        mde,
        best.mde,
        power,
        alpha,
        method,
        best.cost_seconds,
        best.cost_seconds / 3600,
        gpu_costs.total(best.R, best.K, best.S) / 3600 if gpu_costs else None,
        closed_form={"R": R_cf, "K": K_cf, "S": S_cf},
        budget_mde=budget,
        notes=notes,
    )


# --------------------------------------------------------------------------- measured inputs


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stage_records(runs_root: Path | str, stage: str) -> list[tuple[Path, dict]]:
    """Finished records of ``stage`` under ``<runs_root>/stages/<stage>-<key>/_stage.json``, latest
    ``started`` first: (stage folder, record)."""
    found = []
    for path in Path(runs_root, "stages").glob(f"{stage}-*/{STAGE_RECORD}"):
        record = _read_json(path)
        if record is not None and record.get("stage", stage) == stage and "seconds" in record:
            found.append((path.parent, record))
    return sorted(found, key=lambda item: float(item[1].get("started") or 0), reverse=True)


def _read(reads: Mapping[str, Any], dotted: str) -> Any:
    """A setting from a record's ``reads`` (dotted keys, or a section stored whole); None if absent."""
    if dotted in reads:
        return reads[dotted]
    section, _, rest = dotted.partition(".")
    node = reads.get(section)
    for part in rest.split(".") if rest else []:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _work_ratio(reads: Mapping[str, Any], config, keys: Sequence[tuple[str, int]]) -> float:
    """Product over ``keys`` (dotted setting, exponent) of (config value / recorded value) ** exponent,
    for the settings the record holds: how much more work this config's unit is."""
    ratio = 1.0
    for dotted, power in keys:
        recorded = _read(reads, dotted)
        if isinstance(recorded, (int, float)) and recorded > 0:
            ratio *= (float(config.section(dotted)) / float(recorded)) ** power
    return ratio


FT_WORK = (("diffusion.max_steps", 1), ("diffusion.global_batch_size", 1))
GEN_WORK = (("generation.images_per_subclass", 1), ("generation.inference_steps", 1), ("data.image_size", 2))
EVAL_WORK = (("generation.images_per_subclass", 1), ("data.image_size", 2))
CLS_WORK = (("classifier.epochs", 1), ("tune.count_scale", 1), ("classifier.image_size", 2))


def _modes(config) -> int:
    """Downstream modes per (variant, pool, seed) in the config's tune space (1 when unreadable)."""
    try:
        from fairskin.tune.spaces import load_space

        space = load_space(config.tune.space)
    except Exception:  # noqa: BLE001  (a custom space that does not load here: one mode)
        return 1
    for p in space.parameters:
        if p.name == "mode" and isinstance(p.values, list):
            return max(1, len(p.values))
    return 1


def level_counts(config) -> dict[str, int]:
    """Units per level unit in ``config``: fine-tunes per repeat, pools per (repeat, pool seed),
    sampled pools among them (mixed pools are made from others), classifier trials per (repeat,
    pool, seed) cell (variants x downstream modes)."""
    from fairskin.config import is_mix_control

    variants = list(config.diffusion.variants)
    sampled = [v for v in variants if not is_mix_control(v)]
    return {
        "finetunes": len(sampled),
        "pools": len(variants),
        "sampled_pools": len(sampled),
        "trials": len(variants) * _modes(config),
    }


def _n_pools(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/index.json"))


def _model_seconds(config, model: str, work: float, pixels: int) -> float:
    """``HERE_MODEL``'s seconds for one ``model`` unit ("finetune", "generate", "evaluate", "trial") scaled
    linearly to ``work`` (the unit's steps x images, or epochs x count scale) and ``pixels`` (its image side)."""
    return HERE_MODEL[f"{model}_s"] * work / HERE_MODEL[f"{model}_work"] * (pixels / HERE_MODEL["image_size"]) ** 2


MAX_SCALE = 4.0  # a record whose unit did 4x more or less work than this config's is not used


def _pick(
    records: Sequence[tuple[Path, dict]],
    config,
    keys: Sequence[tuple[str, int]],
    reads_of=lambda folder, rec: rec.get("reads") or {},
) -> tuple[Path, dict, float] | str:
    """The latest record made with this config's settings (work ratio 1), else the latest within
    ``MAX_SCALE`` of them, as (folder, record, work ratio); else why none is usable."""
    rated = [(folder, rec, _work_ratio(reads_of(folder, rec), config, keys)) for folder, rec in records]
    same = [r for r in rated if abs(r[2] - 1) < 1e-9]
    near = [r for r in rated if 1 / MAX_SCALE <= r[2] <= MAX_SCALE]
    if same or near:
        return (same or near)[0]
    if rated:
        return (
            f"its latest record's units did {1 / rated[0][2]:.3g} x this config's work each "
            f"(more than {MAX_SCALE:g} x off: start-up overhead does not scale)"
        )
    return "no record"


def measured_costs(runs_root: Path | str, config, notes: list[str] | None = None) -> tuple[UnitCosts, dict[str, str]]:
    """Unit costs on this machine (wall seconds per level unit, :class:`UnitCosts`) from the stage records.

    Per unit, at the concurrency the stage ran with: a fine-tune = a finetune stage's seconds / its
    fine-tunes (summary keys ``<generator>_seconds``); a pool = a generate stage's seconds / its pools
    (``<stage folder>/*/index.json``) + an evaluate stage's seconds / the pools it read; a classifier
    trial = a tune stage's ``study_seconds`` / ``trials``. Each times its count per level in
    ``config`` (:func:`level_counts`). Of each stage the latest record (by ``started``) made with this
    config's work settings (``FT_WORK``, ``GEN_WORK``, ``EVAL_WORK``, ``CLS_WORK``) is used, else the
    latest within ``MAX_SCALE`` x of them, scaled linearly by the work. A unit without a usable record
    comes from ``HERE_MODEL`` (README run 6) scaled the same way, and is "assumed".

    Returns (costs, measured): measured maps c_ft, c_pool, c_cls to "measured" or "assumed: <why>";
    ``notes`` (if given) gets one sentence per measured unit.
    """
    root = Path(runs_root)
    stages = root / "stages"
    counts = level_counts(config)
    notes = notes if notes is not None else []
    measured: dict[str, str] = {}
    model = f"cost model from {HERE_MODEL['source']} scaled to this config"

    def scaled(ratio: float, what: str) -> str:
        return f", x {ratio:.3g} for this config's {what}" if abs(ratio - 1) > 1e-9 else ""

    # fine-tune
    d = config.diffusion
    ft_model = _model_seconds(config, "finetune", d.max_steps * d.global_batch_size, config.data.image_size)
    finetunes = [
        (f, r)
        for f, r in stage_records(root, "finetune")
        if any(k.endswith("_seconds") for k in r.get("summary") or {})
    ]
    picked = _pick(finetunes, config, FT_WORK)
    if isinstance(picked, str):
        measured["c_ft"] = f"assumed: finetune: {picked} under {stages}; {model}"
        c_ft = ft_model * counts["finetunes"]
    else:
        folder, rec, ratio = picked
        per = [float(v) for k, v in rec["summary"].items() if k.endswith("_seconds") and isinstance(v, (int, float))]
        wall = float(rec["seconds"]) / len(per)
        c_ft = wall * ratio * counts["finetunes"]
        measured["c_ft"] = "measured"
        notes.append(
            f"fine-tune: {folder.name}, {rec['seconds']:.0f} s for {len(per)} fine-tunes at concurrency "
            f"{sum(per) / float(rec['seconds']):.2f}: {wall:.1f} s each{scaled(ratio, 'steps x batch')}, "
            f"x {counts['finetunes']} per repeat"
        )

    # pool: generate + evaluate, per pool of the records, times the config's pools per (repeat, pool seed)
    g = config.generation
    images = g.images_per_subclass * len(config.data.groups) * len(config.data.diseases)
    # mixed pools are made from two sampled ones: the model charges only the sampled share
    gen_model = (
        _model_seconds(config, "generate", images * g.inference_steps, config.data.image_size)
        * counts["sampled_pools"]
        / counts["pools"]
    )
    eval_model = _model_seconds(config, "evaluate", images, config.data.image_size)
    generates = [(f, r) for f, r in stage_records(root, "generate") if _n_pools(f)]
    parts, why = {}, {}
    picked = _pick(generates, config, GEN_WORK)
    if isinstance(picked, str):
        why["generate"] = picked
    else:
        folder, rec, ratio = picked
        n = _n_pools(folder)
        parts["generate"] = float(rec["seconds"]) / n * ratio
        notes.append(
            f"pools: {folder.name}, {rec['seconds']:.0f} s for {n} pools: {rec['seconds'] / n:.1f} s each"
            f"{scaled(ratio, 'images x steps')}"
        )

    def evaluated(folder: Path, rec: dict) -> tuple[Path, dict] | None:
        """The generate stage an evaluate record read (by its path), else None."""
        source = (rec.get("inputs") or {}).get("generate", {}).get("path")
        match = [(f, r) for f, r in generates if source and f.resolve() == Path(source).resolve()]
        return match[0] if match else None

    evaluates = [(f, r) for f, r in stage_records(root, "evaluate") if evaluated(f, r)]
    picked = _pick(evaluates, config, EVAL_WORK, reads_of=lambda f, r: evaluated(f, r)[1].get("reads") or {})
    if isinstance(picked, str):
        why["evaluate"] = picked if picked != "no record" else "no record of the pools it read"
    else:
        folder, rec, ratio = picked
        n = _n_pools(evaluated(folder, rec)[0])
        parts["evaluate"] = float(rec["seconds"]) / n * ratio
        notes.append(
            f"evaluation: {folder.name}, {rec['seconds']:.0f} s for {n} pools: {rec['seconds'] / n:.1f} s "
            f"each{scaled(ratio, 'images')}"
        )
    if not why:
        measured["c_pool"] = "measured"
    else:
        measured["c_pool"] = (
            "assumed: "
            + "; ".join(f"{k}: {v}" for k, v in why.items())
            + f" under {stages}; "
            + model
            + ("; the other part measured" if parts else "")
        )
    c_pool = (parts.get("generate", gen_model) + parts.get("evaluate", eval_model)) * counts["pools"]

    # classifier trials
    c = config.classifier
    trial_model = _model_seconds(config, "trial", c.epochs * config.tune.count_scale, c.image_size)
    tunes = [(f, r) for f, r in stage_records(root, "tune") if int((r.get("summary") or {}).get("trials") or 0)]
    picked = _pick(tunes, config, CLS_WORK)
    if isinstance(picked, str):
        measured["c_cls"] = f"assumed: tune: {picked} under {stages}; {model}"
        c_cls = trial_model * counts["trials"]
    else:
        folder, rec, ratio = picked
        trials = int(rec["summary"]["trials"])
        seconds = float(rec["summary"].get("study_seconds") or rec["seconds"])
        c_cls = seconds / trials * ratio * counts["trials"]
        measured["c_cls"] = "measured"
        notes.append(
            f"classifier: {folder.name}, study {seconds:.0f} s for {trials} trials: {seconds / trials:.1f} s "
            f"each{scaled(ratio, 'epochs x count scale')}, x {counts['trials']} per (repeat, pool, seed)"
        )
    return UnitCosts(c_ft, c_pool, c_cls), measured


def measured_components(runs_root: Path | str, endpoint: str) -> Components | None:
    """The endpoint's components from the newest ``<runs_root>/**/variance_components.csv`` (by mtime).

    The file has one row per endpoint (and compared variant, if any) with at least the columns
    endpoint, sigma2_ft, sigma2_pool, sigma2_cls (endpoint units squared; NaN: merged into the level
    above) and R, K, S. With several rows for the endpoint the largest sigma2_ft + sigma2_pool +
    sigma2_cls is taken (the variant hardest to tell apart; NaN as 0). None when there is no file or
    no row for the endpoint.
    """
    files = [p for p in Path(runs_root).rglob(COMPONENTS_FILE) if p.is_file()]
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    with newest.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("endpoint") == endpoint]

    def number(row: Mapping[str, str], key: str) -> float:
        try:
            return float(row.get(key) or "nan")
        except ValueError:
            return float("nan")

    def count(row: Mapping[str, str], key: str) -> int | None:
        value = number(row, key)
        return int(value) if math.isfinite(value) else None

    if not rows:
        return None
    row = max(
        rows,
        key=lambda r: sum(
            v for v in (number(r, k) for k in ("sigma2_ft", "sigma2_pool", "sigma2_cls")) if math.isfinite(v)
        ),
    )
    return Components(
        number(row, "sigma2_ft"),
        number(row, "sigma2_pool"),
        number(row, "sigma2_cls"),
        R=count(row, "R"),
        K=count(row, "K"),
        S=count(row, "S"),
        source=str(newest) + (f" (of {len(rows)} rows, the largest)" if len(rows) > 1 else ""),
    )


def components_status(components: Components, classifier_level: bool = True) -> dict[str, str]:
    """For each component "measured" or "assumed: <why>" (NaN: merged into the level above; negative: 0)."""
    out = {}
    above = {"sigma2_pool": "sigma2_ft (K = 1 in the data)", "sigma2_cls": "sigma2_pool (S = 1 in the data)"}
    for name, value in components.parts().items():
        if name == "sigma2_cls" and not classifier_level:
            out[name] = "assumed: 0 (generation endpoint: no classifier level)"
        elif math.isnan(value) and name in above:
            out[name] = (
                f"assumed: 0, not separable: counted in {above[name]}, so planning more "
                f"{'pools' if name == 'sigma2_pool' else 'seeds'} is conservative"
            )
        elif not math.isfinite(value):
            out[name] = f"assumed: 0 (not finite in {components.source})"
        elif value < 0:
            out[name] = f"assumed: 0 (the estimate {value:.3g} is negative)"
        else:
            out[name] = "measured"
    return out


# --------------------------------------------------------------------------- GPU hours at paper scale


def load_gpu_figures(path: Path | str) -> dict | None:
    """``benchmarks/gpu.py``'s figures from a file of its output (JSON lines): the ``"section": "all"``
    line, else every line merged. None when the file is missing or holds no JSON object."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    merged: dict = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            if value.get("section") == "all":
                return value
            merged.update(value)
    return merged or None


def gpu_costs(config, figures: Mapping[str, Any] | None) -> tuple[UnitCosts, str, list[str]]:
    """GPU-seconds per level unit at ``paper`` scale on one GPU (:class:`UnitCosts`), a status and notes.

    Sizes are the paper preset's (SD v1-4 at 512 px, steps x batch, 1,000 images per subclass at 50
    sampling steps, ViT-B/16 for 10 epochs on ~9,600 images); the variants, groups, diseases and
    tune space are ``config``'s (a CBDM-loss variant trains twice per step). From ``figures`` (a
    CUDA run of ``benchmarks/gpu.py``): train_images_per_s_vanilla / _cbdm, sample_images_per_s_fp32_50,
    fid_images_per_s_fp32 (a classifier trial: 3 x its forward per training image); each figure
    missing, and everything without ``figures``, from ``PAPER_FLOP`` at 40 % MFU of an H100's bf16
    peak (assumed). Status: "measured" or "assumed: <why>".
    """
    from fairskin.config import PRESETS, is_mix_control

    paper = PRESETS["paper"]()
    d, g, c = paper["diffusion"], paper["generation"], paper["classifier"]
    notes: list[str] = []
    usable = dict(figures or {})
    mode = str(usable.get("mode", ""))
    why = None
    if not figures:
        why = "no benchmarks/gpu.py figures"
    elif mode.startswith("tiny") or "cuda" not in mode:
        why = f"benchmarks/gpu.py figures are of its tiny mode ({mode or 'mode unknown'}), not paper scale"
        usable = {}
    rate = PAPER_FLOP["peak"] * PAPER_FLOP["mfu"]
    used, modelled = [], []

    def figure(key: str, flop_per_item: float) -> float:
        """Seconds per item: 1 / the measured items per second, else FLOP / (peak x MFU)."""
        value = usable.get(key)
        if isinstance(value, (int, float)) and value > 0:
            used.append(key)
            return 1.0 / float(value)
        modelled.append(key)
        return flop_per_item / rate

    counts = level_counts(config)
    images_ft = d["max_steps"] * d["global_batch_size"]
    c_ft = 0.0
    for name in config.diffusion.variants:
        if is_mix_control(name):
            continue
        cbdm = config.diffusion.variant(name).loss == "cbdm"
        c_ft += images_ft * figure(
            "train_images_per_s_cbdm" if cbdm else "train_images_per_s_vanilla",
            PAPER_FLOP["train_per_image"] * (2 if cbdm else 1),
        )
    images = g["images_per_subclass"] * len(config.data.groups) * len(config.data.diseases)
    sample = figure(
        f"sample_images_per_s_fp32_{g['inference_steps']}", PAPER_FLOP["sample_per_image_step"] * g["inference_steps"]
    )
    fid = figure("fid_images_per_s_fp32", PAPER_FLOP["vit_forward"])
    c_pool = images * (sample * counts["sampled_pools"] + fid * counts["pools"])
    c_cls = counts["trials"] * c["epochs"] * PAPER_FLOP["classifier_images"] * 3 * fid
    if why is None and modelled:
        why = f"benchmarks/gpu.py figures lack {sorted(set(modelled))}"
    status = (
        "measured"
        if why is None
        else (
            f"assumed: {why}; FLOP cost model (README 'Paper scale') at {PAPER_FLOP['mfu']:.0%} MFU of "
            f"{PAPER_FLOP['peak'] / 1e12:.0f} TFLOP/s bf16" + (f", measured {sorted(set(used))}" if used else "")
        )
    )
    if figures and not why:
        notes.append(
            f"GPU-hours from benchmarks/gpu.py on {usable.get('device', 'an unnamed GPU')}; a classifier "
            "trial as 3 x the ViT-B/16 forward of its fid section per training image"
        )
    return UnitCosts(c_ft, c_pool, c_cls), status, notes


# --------------------------------------------------------------------------- command line


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The plan's options (with --preset / --config / key=value / --debug) on ``parser``."""
    from fairskin.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--endpoint", required=True, help="the report metric key to plan for, e.g. worst_group_accuracy"
    )
    parser.add_argument(
        "--mde", required=True, type=_positive(float), help="the effect to detect, in the endpoint's units"
    )
    parser.add_argument("--power", type=float, default=None, help="power at the MDE (default: report.power)")
    parser.add_argument(
        "--budget-hours",
        type=_positive(float),
        default=None,
        help="also the smallest MDE within this many wall hours on this machine (with --gpus: wall "
        "hours on that many GPUs at paper scale)",
    )
    parser.add_argument(
        "--gpus",
        type=_positive(int),
        default=None,
        help="GPUs for the paper-scale wall time (GPU-hours / N, perfect scaling assumed)",
    )
    parser.add_argument(
        "--gpu-figures",
        default=None,
        help=f"a file of benchmarks/gpu.py's output (default <runs root>/{GPU_FIGURES_FILE})",
    )
    parser.add_argument(
        "--method",
        choices=["t", "normal"],
        default="t",
        help="t: exact paired t-test over R repeats (default); normal: the z approximation",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON line (keys R, K, S, mde, power, cost_hours_here, cost_gpu_hours, "
        "measured, ...); the text goes to stderr",
    )


def first_run_command(args: argparse.Namespace) -> str:
    """The pipeline run that measures the components this version can separate: R repeats and S = 2
    classifier seeds per repeat (one pool per generator until ``generation.pool_seeds`` arrives, so the
    pool's component stays inside the fine-tune's; the plan then keeps K = 1)."""
    parts = ["python", "jobs/full_pipeline.py", "--preset", args.preset]
    if args.config_file:
        parts += ["--config", args.config_file]
    parts += list(args.overrides) + ["tune.train_seeds=2"]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    """``python -m fairskin plan`` on parsed arguments; the exit code (0 planned, 1 no design reaches the
    MDE within the repeat limit, 2 an input error or no measured components)."""
    from fairskin.cli import config_from_args
    from fairskin.metrics.endpoints import CLASSIFIER_KEYS, DIRECTIONS

    config = config_from_args(args)
    out = sys.stderr if args.json else sys.stdout
    endpoint = args.endpoint
    if endpoint not in DIRECTIONS or DIRECTIONS[endpoint] == 0:
        print(
            f"error: --endpoint {endpoint!r} is no ranked report metric; choose from "
            f"{sorted(k for k, v in DIRECTIONS.items() if v)}",
            file=sys.stderr,
        )
        return 2
    power = config.report.power if args.power is None else args.power
    m = len(config.report.primary)
    alpha = config.report.alpha / m
    if not alpha < power < 1:
        print(f"error: --power must lie in ({alpha:g}, 1), got {power}", file=sys.stderr)
        return 2
    root = config.runtime.runs_root
    components = measured_components(root, endpoint)
    if components is not None and not (math.isfinite(components.sigma2_ft) and components.sigma2_ft >= 0):
        print(
            f"error: {components.source} has no usable sigma2_ft for {endpoint} ({components.sigma2_ft}): "
            "too few repeats to separate the fine-tune level",
            file=sys.stderr,
        )
        components = None
    if components is None:
        print(
            f"error: no measured variance components of {endpoint} under {root} (no {COMPONENTS_FILE} with a "
            f"row for it): the plan needs them. Make the run that measures them first (S = 2 classifier "
            f"seeds per repeat; one pool per generator in this version, so the plan keeps K = 1):\n  {first_run_command(args)}\nthen plan again with the same "
            "runs root.",
            file=sys.stderr,
        )
        return 2
    classifier_level = endpoint in CLASSIFIER_KEYS  # generation endpoints have no classifier seed level
    notes = [
        f"alpha {alpha:.4g} = report.alpha {config.report.alpha:g} / m = {m} primary endpoints (the family's "
        "first Holm level)"
    ]
    if endpoint not in config.report.primary:
        notes.append(
            f"{endpoint} is not a declared primary endpoint (report.primary): exploratory metrics get no "
            "verdict; planned at the family's level anyway"
        )
    notes.append(
        f"components from {components.source}"
        + (f", measured at R = {components.R}, K = {components.K}, S = {components.S}" if components.R else "")
    )
    measured = components_status(components, classifier_level)
    costs, cost_status = measured_costs(root, config, notes)
    measured.update(cost_status)
    figures_path = Path(args.gpu_figures) if args.gpu_figures else root / GPU_FIGURES_FILE
    figures = load_gpu_figures(figures_path)
    if args.gpu_figures and figures is None:
        print(f"error: --gpu-figures {figures_path}: no benchmarks/gpu.py JSON lines there", file=sys.stderr)
        return 2
    gpu, gpu_status, gpu_notes = gpu_costs(config, figures)
    measured["gpu"] = gpu_status
    notes += gpu_notes
    budget_seconds = budget_costs = None
    budget_on = "wall hours here"
    if args.budget_hours is not None:
        # with --gpus the budget is wall hours on that many GPUs at paper scale: N x H GPU-hours
        budget_seconds = args.budget_hours * 3600 * (args.gpus or 1)
        budget_costs = gpu if args.gpus else costs
        budget_on = "GPU-hours at paper scale" if args.gpus else budget_on
    result = plan(
        components,
        costs,
        args.mde,
        alpha,
        power,
        budget_seconds,
        gpu,
        method=args.method,
        classifier_level=classifier_level,
        budget_costs=budget_costs,
        budget_on=budget_on,
    )
    result.measured = measured
    result.notes = notes + result.notes
    payload = plan_json(
        result,
        endpoint,
        components,
        costs,
        gpus=args.gpus,
        budget_hours=args.budget_hours,
        family={"alpha": config.report.alpha, "m": m},
    )
    for line in plan_lines(result, endpoint, args.gpus):
        print(line, file=out)
    if args.json:
        print(json.dumps(payload), flush=True)
    return 0 if result.R is not None else 1


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def plan_json(
    result: Plan,
    endpoint: str,
    components: Components,
    costs: UnitCosts,
    *,
    gpus: int | None = None,
    budget_hours: float | None = None,
    family: Mapping[str, Any] | None = None,
) -> dict:
    """The JSON object of a plan: R, K, S, mde (reached, endpoint units), power, cost_hours_here,
    cost_gpu_hours, measured, then endpoint, mde_target, alpha, family, method, cost_gpu_wall_hours (on
    ``gpus`` GPUs), closed_form, budget_hours, budget_mde, components, unit_costs_seconds, notes. Non-finite
    floats become null."""
    return _finite(
        {
            "R": result.R,
            "K": result.K,
            "S": result.S,
            "mde": result.mde_achieved,
            "power": result.power,
            "cost_hours_here": result.cost_hours_here,
            "cost_gpu_hours": result.cost_gpu_hours,
            "measured": result.measured,
            "endpoint": endpoint,
            "mde_target": result.mde_target,
            "alpha": result.alpha,
            "family": dict(family or {}),
            "method": result.method,
            "gpus": gpus,
            "cost_gpu_wall_hours": (
                result.cost_gpu_hours / gpus if gpus and result.cost_gpu_hours is not None else None
            ),
            "closed_form": result.closed_form,
            "budget_hours": budget_hours,
            "budget_mde": result.budget_mde,
            "components": {k: v for k, v in asdict(components).items()},
            "unit_costs_seconds": asdict(costs),
            "notes": list(result.notes),
        }
    )


def plan_lines(result: Plan, endpoint: str, gpus: int | None = None) -> list[str]:
    """The plan as a few lines of text."""
    cf = result.closed_form
    lines = []
    if result.R is None:
        lines.append(
            f"{endpoint}: no design reaches MDE {result.mde_target:g} (power {result.power:g}, "
            f"alpha {result.alpha:.4g})"
        )
    else:
        gpu = (
            ""
            if result.cost_gpu_hours is None
            else f"; at paper scale {result.cost_gpu_hours:.3g} GPU-hours"
            + (f" ({result.cost_gpu_hours / gpus:.3g} h on {gpus} GPUs)" if gpus else "")
        )
        lines.append(
            f"{endpoint}: R = {result.R} repeats x K = {result.K} pools x S = {result.S} seeds reaches MDE "
            f"{result.mde_achieved:.4g} (target {result.mde_target:g}, power {result.power:g}, alpha "
            f"{result.alpha:.4g}, {'paired t' if result.method == 't' else 'normal approximation'}); "
            f"{result.cost_hours_here:.3g} h here{gpu}"
        )
    lines.append(f"closed form (normal approximation): R = {cf['R']:.2f}, K = {cf['K']:.2f}, S = {cf['S']:.2f}")
    if result.budget_mde:
        b = result.budget_mde
        lines.append(
            f"within the budget: MDE {b['mde']:.4g} with R = {b['R']}, K = {b['K']}, S = {b['S']} "
            f"({b['cost_hours']:.3g} {b['on']})"
        )
    lines += [f"{name}: {status}" for name, status in result.measured.items()]
    lines += [f"note: {n}" for n in result.notes]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fairskin.plan``: see the module docstring; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m fairskin plan",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
