"""The nested-design optimiser: the least-cost (R, K, S) that detects an effect, closed form and integer.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fairskin.plan.design import (
    MAX_LEVEL,
    MAX_R,
    MIN_R,
    Components,
    Design,
    Method,
    UnitCosts,
    design_mde,
    repeats_needed,
    target_variance,
)

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
    # Statistical efficiency: the least-cost design when only R grows (K = S = 1) as {R, mde, cost_hours_here,
    # cost_gpu_hours}, and its cost over the plan's ({here, gpu}: 1 where R is the lever); None when unreachable.
    r_only: dict[str, Any] | None = None
    efficiency: dict[str, float | None] | None = None


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
    comp, notes = _planned_components(components, classifier_level)
    R_cf, K_cf, S_cf = closed_form(comp, costs, mde, alpha, power, r_min)
    K_range, S_range = _search_ranges(K_cf, S_cf, method, classifier_level)
    best = _cheapest(
        _cell(comp, costs, K, S, mde, alpha, power, method, r_min, max_R) for K in K_range for S in S_range
    )
    if best is None:
        notes.append(f"no design with R <= {max_R} repeats reaches MDE {mde:g} (closed form: R = {R_cf:.0f})")
    budget = None
    if budget_seconds is not None:
        budget = _budget_mde(
            comp,
            budget_costs or costs,
            budget_seconds,
            alpha,
            power,
            method,
            r_min,
            max_R,
            max_K=max(20, 2 * math.ceil(K_cf)),
            max_S=(max(20, 2 * math.ceil(S_cf)) if classifier_level else 1),
            budget_on=budget_on,
            best=best,
            notes=notes,
        )
    closed = {"R": R_cf, "K": K_cf, "S": S_cf}
    if best is None:
        return Plan(None, None, None, mde, None, power, alpha, method, None, None, None, closed, budget, notes=notes)
    r_only, efficiency = _r_only(comp, costs, gpu_costs, best, mde, alpha, power, method, r_min, max_R)
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
        closed_form=closed,
        budget_mde=budget,
        notes=notes,
        r_only=r_only,
        efficiency=efficiency,
    )


def _r_only(
    comp: Components,
    costs: UnitCosts,
    gpu_costs: UnitCosts | None,
    best: Design,
    mde: float,
    alpha: float,
    power: float,
    method: Method,
    r_min: int,
    max_R: int,
) -> tuple[dict[str, Any] | None, dict[str, float | None] | None]:
    """The design K = S = 1 that reaches ``mde`` (only R grows) and its cost over ``best``'s, here and in
    GPU-hours at paper scale (the same two designs priced on ``gpu_costs``); (None, None) when unreachable."""
    only = _cell(comp, costs, 1, 1, mde, alpha, power, method, r_min, max_R)
    if only is None:
        return None, None
    gpu = (gpu_costs.total(only.R, 1, 1) / 3600) if gpu_costs else None
    best_gpu = (gpu_costs.total(best.R, best.K, best.S) / 3600) if gpu_costs else None
    r_only = {"R": only.R, "mde": only.mde, "cost_hours_here": only.cost_seconds / 3600, "cost_gpu_hours": gpu}
    efficiency = {
        "here": only.cost_seconds / best.cost_seconds if best.cost_seconds > 0 else None,
        "gpu": gpu / best_gpu if gpu is not None and best_gpu else None,
    }
    return r_only, efficiency


def _planned_components(components: Components, classifier_level: bool) -> tuple[Components, list[str]]:
    """The components the plan uses (cleaned; sigma2_cls 0 without a classifier level) and its first notes."""
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
    return comp, notes


def _search_ranges(K_cf: float, S_cf: float, method: Method, classifier_level: bool) -> tuple[Iterable, Iterable]:
    """The K and S the integer plan tries around the closed form's (K_cf, S_cf)."""
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
    return K_range, S_range


def _budget_mde(
    comp: Components,
    on: UnitCosts,
    budget_seconds: float,
    alpha: float,
    power: float,
    method: Method,
    r_min: int,
    max_R: int,
    *,
    max_K: int,
    max_S: int,
    budget_on: str,
    best: Design | None,
    notes: list[str],
) -> dict[str, Any] | None:
    """The smallest MDE within ``budget_seconds`` (in the units of ``on``) as {mde, R, K, S, cost_hours, on};
    None when not even (r_min, 1, 1) fits. ``notes`` gets why nothing fits, or that ``best`` is over budget."""
    found = smallest_mde(comp, on, budget_seconds, alpha, power, method, r_min, max_R, max_K=max_K, max_S=max_S)
    if found is None:
        notes.append(
            f"the budget pays for less than R = {r_min}, K = S = 1: {on.total(r_min, 1, 1) / 3600:.3g} {budget_on}"
        )
        return None
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
    return budget
