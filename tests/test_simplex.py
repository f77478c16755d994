"""The simplex sampler: exactly uniform on the bounded simplex, a deterministic map of the unit cube.

Distributions are compared with a rejection reference (Dirichlet(1, ..., 1) draws kept when
inside the bounds: exactly uniform on the bounded simplex). No Ray.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from fairskin.tune.spaces import sample_simplex

N = 20_000
# Monte-Carlo tolerances for N draws on each side. A share has sd <= 0.2 here, so the standard
# error of a difference of two means is <= 0.2 * sqrt(2 / N) = 0.002: 0.01 is 5 standard errors.
# A 10th/90th percentile has standard error sqrt(0.1 * 0.9 / N) / density; the densities at those
# percentiles are about 1 or more, so the difference has standard error <= 0.003: 0.015 is 5 of them.
# (Observed: <= 0.003 for means and <= 0.005 for percentiles over several seeds.)
MEAN_TOL, PERCENTILE_TOL = 0.01, 0.015

DEMO = ((0.0,) * 3, (0.6,) * 3)  # the demo's binding pool caps (African, Asian, Caucasian)
ASYMMETRIC = ((0.05, 0.1, 0.0), (0.5, 0.3, 0.9))
K4 = ((0.0, 0.05, 0.1, 0.0), (0.4, 0.5, 0.3, 0.6))
K2 = ((0.1, 0.3), (0.6, 0.8))


@functools.lru_cache
def draws(lows: tuple, highs: tuple, n=N, seed=0) -> np.ndarray:
    u = np.random.default_rng(seed).random((n, len(lows) - 1))
    return np.array([sample_simplex(list(row), lows, highs) for row in u])


def rejection(lows, highs, n=N, seed=1) -> np.ndarray:
    rng, kept = np.random.default_rng(seed), []
    while sum(len(k) for k in kept) < n:
        p = rng.dirichlet(np.ones(len(lows)), size=4 * n)
        kept.append(p[((p >= lows) & (p <= highs)).all(axis=1)])
    return np.concatenate(kept)[:n]


@pytest.mark.parametrize("bounds", [DEMO, ASYMMETRIC, K4, K2], ids=["demo-caps", "asymmetric", "K4", "K2"])
def test_matches_rejection_reference(bounds):
    lows, highs = bounds
    got, ref = draws(lows, highs), rejection(lows, highs)
    assert np.abs(got.mean(0) - ref.mean(0)).max() < MEAN_TOL, (got.mean(0), ref.mean(0))
    for q in (10, 90):
        gq, rq = np.percentile(got, q, axis=0), np.percentile(ref, q, axis=0)
        assert np.abs(gq - rq).max() < PERCENTILE_TOL, (q, gq, rq)


def test_demo_caps_first_group_is_not_biased():
    # Stick-breaking gave the first group mean 0.20 and P(p_1 < 0.2) = 0.55; uniform: 1/3 and 0.231.
    p = draws(*DEMO)
    assert abs(p[:, 0].mean() - 1 / 3) < MEAN_TOL
    # Areas relative to the whole triangle: p_1 < 0.2 is 0.36, minus 0.12 each where p_2 or p_3 > 0.6;
    # the capped triangle is 1 - 3 x 0.16 = 0.52: P(p_1 < 0.2) = 0.12 / 0.52 = 3/13.
    assert abs((p[:, 0] < 0.2).mean() - 3 / 13) < 0.015  # standard error sqrt(0.23 * 0.77 / N) = 0.003


def _exact_first_cdf(v, lows, highs) -> Fraction:
    """P(p_1 - low_1 <= v) under the uniform law, in exact rational arithmetic (inclusion-exclusion)."""
    c = [Fraction(h) - Fraction(lo) for lo, h in zip(lows, highs)]
    t, m = 1 - sum(Fraction(lo) for lo in lows), len(lows) - 1

    def cdf(w):
        total = Fraction(0)
        for r in range(m + 1):
            for s in itertools.combinations(c[1:], r):
                x = t - sum(s)
                total += (-1) ** r * (max(x, 0) ** m - max(x - w, 0) ** m)
        return total

    return cdf(Fraction(v)) / cdf(min(c[0], t))


@pytest.mark.parametrize("k", [3, 4, 5, 6, 10])
def test_first_coordinate_is_its_exact_quantile(k):
    # Float64 round-off (cancellation in the alternating sums) stays far below 1e-9 in the CDF.
    # Without the reflection y -> c - y, tight caps at K = 6 would miss by 1e-7 (1.02) and 0.3 (1.001).
    rng = np.random.default_rng(k)
    cases = [([0.0] * k, [1.02 / k] * k), ([0.0] * k, [1.001 / k] * k), ([0.0] * k, [1.0] * k)]
    for _ in range(3):  # random lows, widths that keep the bounds feasible (sum of highs > 1.1)
        lows = list(rng.uniform(0, 0.6 / k, k))
        cases.append((lows, [lo + w for lo, w in zip(lows, rng.uniform(1.1 / k, 2.5 / k, k))]))
    for lows, highs in cases:
        for u in rng.random((2 if k > 6 else 5, k - 1)):
            p = sample_simplex(list(u), lows, highs)
            assert abs(float(_exact_first_cdf(p[0] - lows[0], lows, highs)) - u[0]) < 1e-9, (lows, highs, u)


BOUNDS = [
    DEMO,
    ASYMMETRIC,
    K4,
    K2,
    ([0.0] * 3, [0.2, 0.3, 0.5]),  # highs sum exactly to 1: the single point
    ([0.2, 0.3, 0.5], [1.0] * 3),  # lows sum exactly to 1: the single point
    ([0.0, 0.25, 0.0], [1.0, 0.25, 1.0]),  # one group fixed (low == high)
    ([0.4, 0.0], [0.4, 1.0]),  # K = 2, a point
    ([0.0] * 6, [0.17] * 6),  # K = 6, tight caps
    ([0.0] * 10, [0.12] * 10),
]  # K = 10: 512 subsets


@pytest.mark.parametrize("lows,highs", BOUNDS)
def test_every_point_is_in_bounds_and_sums_to_one(lows, highs):
    k = len(lows)
    rng = np.random.default_rng(3)
    corners = itertools.product([0.0, 1.0], repeat=k - 1) if k <= 6 else [[0.0] * (k - 1), [1.0] * (k - 1)]
    us = [list(u) for u in corners] + [list(u) for u in rng.random((50 if k > 6 else 300, k - 1))]
    point = highs if sum(highs) == 1 else lows if sum(lows) == 1 else None
    for u in us:
        p = sample_simplex(u, lows, highs)
        assert len(p) == k and abs(sum(p) - 1) < 1e-9, (u, p)
        assert all(lo <= x <= hi for x, lo, hi in zip(p, lows, highs)), (u, p)
        assert point is None or np.allclose(p, point, atol=1e-12), (u, p)


def test_a_fixed_group_leaves_the_others_uniform():
    p = draws((0.0, 0.25, 0.0), (1.0, 0.25, 1.0), n=5000)
    assert (p[:, 1] == 0.25).all()
    assert abs(p[:, 0].mean() - 0.375) < 0.015  # uniform on [0, 0.75]: sd 0.22, standard error 0.003


def test_deterministic_and_monotone():
    lows, highs = K4
    rng = np.random.default_rng(4)
    for u in rng.random((10, 3)):
        assert sample_simplex(list(u), lows, highs) == sample_simplex(list(u), lows, highs)
        for i in range(3):  # p_i does not decrease when u_i grows, the other u fixed
            grid = np.linspace(0, 1, 101)
            p_i = [sample_simplex([g if j == i else u[j] for j in range(3)], lows, highs)[i] for g in grid]
            assert np.all(np.diff(p_i) >= 0), (i, u)
    p_1 = [sample_simplex([g, 0.3], *DEMO)[0] for g in np.linspace(0, 1, 101)]
    assert p_1[0] == 0.0 and p_1[-1] == 0.6 and np.all(np.diff(p_1) > 0)


@pytest.mark.parametrize(
    "u,lows,highs,message",
    [
        ([0.5], [0.5, 0.2], [0.4, 1.0], r"low > high for group\(s\) \[0\]"),
        ([0.5, 0.5], [0.5, 0.3, 0.3], [1.0] * 3, r"lows sum to 1\.1 > 1"),
        ([0.5, 0.5], [0.0] * 3, [0.3] * 3, r"highs sum to 0\.9 < 1"),
        ([0.5] * 10, [0.0] * 11, [1.0] * 11, r"at most 10"),
        ([0.5], [0.0] * 3, [1.0] * 3, r"need 2 uniforms for 3 groups, got 1"),
        ([0.5, 0.5], [0.0] * 3, [1.0] * 2, r"3 lows but 2 highs"),
        ([math.nan, 0.5], [0.0] * 3, [1.0] * 3, r"finite"),
    ],
)
def test_infeasible_bounds_raise(u, lows, highs, message):
    with pytest.raises(ValueError, match=message):
        sample_simplex(u, lows, highs)
