"""Exact uniform sampling of a bounded simplex, for the ``proportions`` parameter of a search space.

Proportions are drawn from K-1 uniforms by the sequential conditional inverse CDF of the uniform
distribution on {p : low_g <= p_g <= high_g, sum p = 1}: p_1 from its exact marginal, then p_2 given p_1,
and so on; the last group takes the remainder. It is exactly uniform on the bounded simplex, a
deterministic (and in each u_i monotone) map of the unit cube that TPE can model, and no trial is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_SIMPLEX_MAX_GROUPS = 10  # the CDF sums over 2^(K-1) subsets
_SIMPLEX_TOL = 1e-12  # round-off allowed in the bounds; narrower intervals are points


def sample_simplex(u: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> list[float]:
    """K-1 uniforms in [0, 1] -> a point of {p : lows <= p <= highs, sum p = 1}, K = len(lows) <= 10.

    Uniform u (i.i.d. U[0, 1]) give the uniform distribution on that bounded simplex: p_i
    (i < K-1) is the inverse of its conditional CDF given p_1..p_{i-1} at u_i, the last group
    takes the remainder. The map is deterministic and p_i does not decrease when u_i grows
    (the others fixed). Groups with low == high are fixed there (their u is unused). Raises
    ValueError for K > 10 or infeasible bounds (some low > high, sum(lows) > 1, sum(highs) < 1).
    """
    k = len(lows)
    if len(highs) != k:
        raise ValueError(f"simplex bounds: {k} lows but {len(highs)} highs")
    if k > _SIMPLEX_MAX_GROUPS:
        raise ValueError(f"simplex of {k} groups: the exact sampler handles at most {_SIMPLEX_MAX_GROUPS}")
    bad = [i for i in range(k) if lows[i] > highs[i]]
    if bad:
        raise ValueError(f"simplex bounds: low > high for group(s) {bad}")
    if sum(lows) > 1 + _SIMPLEX_TOL:
        raise ValueError(f"simplex bounds: the lows sum to {sum(lows):.12g} > 1")
    if sum(highs) < 1 - _SIMPLEX_TOL:
        raise ValueError(f"simplex bounds: the highs sum to {sum(highs):.12g} < 1")
    if len(u) != k - 1:
        raise ValueError(f"need {k - 1} uniforms for {k} groups, got {len(u)}")
    if not all(math.isfinite(x) for x in u):
        raise ValueError(f"uniforms must be finite, got {list(u)}")
    # Shift to y = p - low in the box [0, c], sum y = t; intervals narrower than the tolerance are points.
    c = [hi - lo if hi - lo > _SIMPLEX_TOL else 0.0 for lo, hi in zip(lows, highs)]
    t = min(max(1.0 - sum(lows), 0.0), sum(c))
    free = [i for i in range(k) if c[i] > 0]
    y = [0.0] * k
    for n, i in enumerate(free[:-1]):
        y[i] = _conditional_inverse(min(max(u[i], 0.0), 1.0), t, [c[j] for j in free[n:]])
        t -= y[i]
    if free:
        y[free[-1]] = t
    return [min(hi, max(lo, lo + yi)) for lo, hi, yi in zip(lows, highs, y)]


def _conditional_inverse(u: float, t: float, c: Sequence[float]) -> float:
    """The u-quantile of y_0 when y is uniform on {0 <= y_j <= c_j, sum y = t} (all c_j > 0).

    By inclusion-exclusion, the (m-1)-volume of {0 <= z_j <= d_j (j < m), sum z = s} is
    sum over subsets S of (-1)^|S| (s - d_S)_+^(m-1) / (m-1)!, with d_S = sum_{j in S} d_j.
    The density of y_0 at v is that volume for the m = len(c) - 1 other coordinates at
    s = t - v, so its CDF on the feasible interval [a, b] is, up to a constant factor,
    G(a) - G(v) with G(v) = sum_S (-1)^|S| (t - c_S - v)_+^m over subsets S of c[1:];
    G decreases; we invert it by Newton steps safeguarded by bisection.
    """
    rest = c[1:]
    a, b = max(0.0, t - sum(rest)), min(c[0], t)
    if b - a <= _SIMPLEX_TOL:
        return min(max(a, 0.0), c[0])
    if len(rest) == 1:  # one coordinate left: y_0 is uniform on its feasible interval
        return a + u * (b - a)
    if 2 * t > sum(c):  # reflect y -> c - y (sum c - t < t): fewer, smaller terms, less cancellation
        return c[0] - _conditional_inverse(1.0 - u, sum(c) - t, c)
    m, terms = len(rest), [(1.0, t)]  # (sign, t - c_S) over subsets S of rest
    for cj in rest:
        terms += [(-sign, x - cj) for sign, x in terms]
    terms = [(sign, x) for sign, x in terms if x > a]  # the others vanish on [a, b]

    def g(v: float) -> tuple[float, float]:  # G(v) and G'(v)
        value = slope = 0.0
        for sign, x in terms:
            d = max(x - v, 0.0)
            value += sign * d**m
            slope -= sign * m * d ** (m - 1)
        return value, slope

    g_a, g_b = g(a)[0], g(b)[0]
    target = g_a - u * (g_a - g_b)
    lo, hi, v = a, b, a + u * (b - a)
    for _ in range(200):  # Newton steps, bisection when a step leaves the bracket [lo, hi] of the root
        value, slope = g(v)
        if value == target:
            return v
        lo, hi = (v, hi) if value > target else (lo, v)
        step = v - (value - target) / slope if slope < 0 else lo
        new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(new - v) <= 1e-13 or hi - lo <= 1e-13:
            return new
        v = new
    return v
