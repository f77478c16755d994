"""The group-sequential design: looks, O'Brien-Fleming-type spending and the calibrated boundaries.

The design and the reasons for it are in :mod:`fairskin.metrics.sequential`, which takes the
verdicts. Here: the repeat counts of the looks (:func:`looks`), the alpha spent at each
(:func:`obf_spending`) and the critical values of the t statistics per look, calibrated on
simulated null studies (:func:`efficacy_boundaries` for better/worse, :func:`equivalence_boundaries`
for the TOST). Boundaries are in t-statistic units, cached and deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

from fairskin.metrics.paired import MIN_N_TTEST

CALIBRATION_DRAWS = 200_000
CALIBRATION_SEED = 0
STUDY_BLOCK = 50_000  # simulated studies per block, to bound memory at large n_max


# --------------------------------------------------------------------------- design


def looks(n_start: int, batch: int, n_max: int) -> list[int]:
    """Repeat counts n_1 < n_2 < ... < n_J = n_max at which the verdicts are taken.

    ``n_start`` (>= 3, the paired t-test's minimum) repeats first, then ``batch`` (>= 1) more at a
    time, the last batch cut short at the cap ``n_max`` (>= n_start). ``looks(3, 2, 12)`` is
    [3, 5, 7, 9, 11, 12]; ``looks(12, 2, 12)`` is [12], the fixed design.
    """
    n_start, batch, n_max = int(n_start), int(batch), int(n_max)
    if n_start < MIN_N_TTEST:
        raise ValueError(f"n_start must be >= {MIN_N_TTEST} repeats (no t-test below), got {n_start}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1 repeat, got {batch}")
    if n_max < n_start:
        raise ValueError(f"n_max ({n_max}) must be >= n_start ({n_start})")
    return [*range(n_start, n_max, batch), n_max]


def check_looks(looks_: Sequence[int]) -> tuple[int, ...]:
    """The looks as a tuple of ints; ``ValueError`` unless strictly increasing from >= 3 repeats."""
    out = tuple(int(n) for n in looks_)
    if not out or out[0] < MIN_N_TTEST or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"looks must be strictly increasing repeat counts starting at >= {MIN_N_TTEST}, got {out}")
    return out


def obf_spending(alpha: float, fractions: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lan-DeMets O'Brien-Fleming-type alpha spending at the given information fractions.

    ``alpha``: total level to spend, in (0, 1) (two-sided alpha / m for better/worse, or one
    one-sided alpha / m for each TOST side: the function is the same); ``fractions``: information
    fractions t_j = n_j / n_max, strictly increasing in (0, 1] (1-D, length J).

    Returns ``(cumulative, increments)``, both arrays of length J: cumulative_j =
    2 - 2 Phi(z_{1 - alpha/2} / sqrt(t_j)) (equal to alpha at t = 1), increments_j =
    cumulative_j - cumulative_{j-1} (cumulative_0 = 0), the level spent at look j alone.
    """
    t = np.asarray(fractions, dtype=float).ravel()
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if len(t) == 0 or np.any(~np.isfinite(t)) or t[0] <= 0 or t[-1] > 1 or np.any(np.diff(t) <= 0):
        raise ValueError(f"fractions must increase strictly within (0, 1], got {t.tolist()}")
    cumulative = 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / np.sqrt(t))
    return cumulative, np.diff(cumulative, prepend=0.0)


# --------------------------------------------------------------------------- calibration


def _calibration_rng(seed: int) -> np.random.Generator:
    # spawn key 0: calibration; simulate_sequential draws from spawn key 1 of its own seed, so the
    # studies that check the boundaries never reuse the calibration's draws, whatever the seeds.
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0,)))


def look_stats(
    rng: np.random.Generator, shape: tuple[int, ...], looks_: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof 1) of the first n_j of n_max iid N(0, 1) draws: two arrays ``shape + (J,)``.

    ``shape``: leading shape of the simulated studies (e.g. (studies,) or (studies, m));
    ``looks_``: the repeat counts n_1 < ... < n_J = n_max. Draws ``shape + (n_max,)`` normals from ``rng``.
    """
    n = np.asarray(looks_, dtype=float)
    z = rng.standard_normal((*shape, looks_[-1]))
    index = np.asarray(looks_) - 1
    total = np.cumsum(z, axis=-1)[..., index]
    squares = np.cumsum(z * z, axis=-1)[..., index]
    mean = total / n
    # N(0, 1) draws have mean ~ 0, so the one-pass variance loses no precision here
    sd = np.sqrt(np.maximum(squares - n * mean * mean, 0.0) / (n - 1))
    return mean, sd


def _null_t(looks_: tuple[int, ...], n_sim: int, seed: int) -> np.ndarray:
    """(n_sim, J) one-sample t statistics of simulated null studies, d iid N(0, 1)."""
    rng = _calibration_rng(seed)
    root = np.sqrt(np.asarray(looks_, dtype=float))
    blocks = []
    for start in range(0, n_sim, STUDY_BLOCK):
        mean, sd = look_stats(rng, (min(STUDY_BLOCK, n_sim - start),), looks_)
        blocks.append(mean / sd * root)
    return np.concatenate(blocks)


def _calibrate(paths: np.ndarray, looks_: tuple[int, ...], increments: np.ndarray, tail: float) -> np.ndarray:
    """Boundaries b_j with P(stat first above b_j at look j) = increments_j, from simulated null paths.

    ``paths``: (paths, J) null statistics (t_j or |t_j|) whose rise above b_j rejects; ``tail``:
    the share of a marginal probability in the tail used (1/2 for |t|, 1 for one side).
    Sequential: b_1 is the exact quantile t_{1 - tail x increment_1, n_1 - 1}; then

        P(first above at j) = P(stat_j > b) - P(stat_j > b, above at an earlier look),

    where the first term is the exact marginal tail of t on n_j - 1 degrees of freedom and only
    the second, the share of the already-rejected paths that are also above b at look j, is
    simulated; b_j is the root. This is the survivors' exceedance count with the exact marginal as
    a control variate: at the early looks, where the increments are 1e-5 to 1e-3 and almost no
    path has been rejected yet, it is the exact t quantile instead of a quantile of a few dozen
    simulated exceedances (whose noise is about 1 / (4 sqrt(count)) relative at 4 degrees of freedom).
    """
    total = len(paths)
    alive = np.ones(total, dtype=bool)
    out = np.empty(len(looks_))
    for j, (n, increment) in enumerate(zip(looks_, increments)):
        marginal = stats.t.isf(increment * tail, n - 1)
        rejected = np.sort(paths[~alive, j])
        if j == 0 or len(rejected) == 0 or rejected[-1] <= marginal:
            out[j] = marginal  # no rejected path above it: the first crossings are all the crossings
        else:

            def excess(b: float) -> float:
                overlap = (len(rejected) - np.searchsorted(rejected, b, side="right")) / total
                return stats.t.sf(b, n - 1) / tail - overlap - increment

            # excess(marginal) = -overlap < 0; at low every rejected path may overlap, excess >= 0
            low = stats.t.isf(min((increment + len(rejected) / total) * tail, 0.5), n - 1)
            out[j] = optimize.brentq(excess, low, marginal, xtol=1e-12)
        alive &= ~(paths[:, j] > out[j])
    return out


@lru_cache(maxsize=64)
def _boundaries(
    looks_: tuple[int, ...], alpha: float, n_sim: int, seed: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(efficacy, equivalence) boundaries for one design; cached, deterministic given the seed."""
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha per endpoint must lie in (0, 0.5), got {alpha}")
    if n_sim < 1000:
        raise ValueError(f"n_sim must be >= 1000 simulated studies, got {n_sim}")
    _, increments = obf_spending(alpha, np.asarray(looks_, dtype=float) / looks_[-1])
    t = _null_t(looks_, n_sim, seed)
    efficacy = _calibrate(np.abs(t), looks_, increments, 0.5)
    # -t is a null path as well (the t process is symmetric): both signs double the one-sided draws
    equivalence = _calibrate(np.concatenate([t, -t]), looks_, increments, 1.0)
    return tuple(efficacy.tolist()), tuple(equivalence.tolist())


def efficacy_boundaries(
    looks: Sequence[int], alpha_per_endpoint: float, n_sim: int = CALIBRATION_DRAWS, seed: int = CALIBRATION_SEED
) -> np.ndarray:
    """Critical values c_j for |t| at each look of a two-sided paired t-test on one endpoint.

    ``looks``: repeat counts n_1 < ... < n_J (n_1 >= 3; n_J is taken as n_max for the information
    fractions n_j / n_J); ``alpha_per_endpoint``: the endpoint's two-sided level (alpha / m);
    ``n_sim``: simulated null studies; ``seed``: of the calibration stream.

    Returns an array (J,) of t-statistic units: better/worse is declared at look j when
    |t_j| > c_j, t_j = mean(d) / (sd(d) / sqrt(n_j)) on the first n_j differences. c_j is
    calibrated on ``n_sim`` simulated studies with d iid N(0, 1): c_1 is the exact t quantile
    t_{1 - Delta_1 / 2, n_1 - 1}, then each c_j is chosen so that the probability of crossing for
    the first time at look j is Delta_j, the O'Brien-Fleming-type increment of
    :func:`obf_spending`: the exact marginal P(|t_j| > c) less the simulated share of the studies
    already rejected that are above c again (the survivors' exceedances, with the exact marginal
    as a control variate; see ``_calibrate``).

    The t statistic's null distribution, jointly over the looks, does not depend on sigma: with
    d = sigma z each t_j(d) equals t_j(z), so one calibration serves every endpoint, whatever its
    spread and units. The values are cached (``functools.lru_cache`` on the tuple of looks) and
    deterministic given ``seed``; a copy is returned.
    """
    return np.array(_boundaries(check_looks(looks), float(alpha_per_endpoint), int(n_sim), int(seed))[0])


def equivalence_boundaries(
    looks: Sequence[int], alpha_per_endpoint: float, n_sim: int = CALIBRATION_DRAWS, seed: int = CALIBRATION_SEED
) -> np.ndarray:
    """Boundaries e_j for the two one-sided tests (TOST) of equivalence within +-margin, per look.

    ``looks``, ``n_sim``, ``seed``: as :func:`efficacy_boundaries` (the same simulated studies);
    ``alpha_per_endpoint``: the level of each one-sided test (alpha / m, as the fixed-design TOST
    of :mod:`fairskin.metrics.verdicts` tests each side at alpha).

    Returns an array (J,) of t-statistic units: equivalence is declared at look j when both
    (mean + margin) / se > e_j and (margin - mean) / se > e_j, se = sd(d) / sqrt(n_j). e_j is
    calibrated so that a one-sided null t process (t_j > e_j) first crosses at look j with the
    spending increment of :func:`obf_spending` at ``alpha_per_endpoint``; e_1 is the exact
    t_{1 - Delta_1, n_1 - 1}.

    Why this bounds a false ``equivalent`` (declared while |true difference| >= margin) by
    ``alpha_per_endpoint`` over all looks: take true difference mu >= margin (the other side is
    symmetric). A declaration at any look needs U_j = (mean_j - margin) / se_j < -e_j. For a given
    draw of the noise, U_j rises with mu at every look at once, so the event "some U_j < -e_j" is
    most likely at mu = margin, the least favourable point, where U_j = mean(z) / (sd(z) / sqrt(n_j))
    for d = margin + sigma z: a central t process, independent of sigma, whose crossing probability
    is the calibrated one. The other side's condition and the precedence of better/worse only make
    a declaration rarer, so the bound is conservative there.
    """
    return np.array(_boundaries(check_looks(looks), float(alpha_per_endpoint), int(n_sim), int(seed))[1])
