"""Repeats until conclusive: group-sequential verdicts on a family of primary endpoints.

The pipeline starts a compared variant at ``n_start`` >= 3 generator repeats and adds batches
of repeats, looking at the paired differences d_r = variant_r - baseline_r (metric units, one
per repeat, see :mod:`fairskin.metrics.paired`) at n_1 < n_2 < ... < n_J = n_max repeats
(:func:`looks`). After each batch it calls :func:`sequential_verdicts`, which gives the verdicts
of the family's m primary endpoints at the current look and whether to stop: every endpoint is
``better``, ``worse`` or ``equivalent``, or the cap n_max is reached. Controls (the twin, the
graded mixes) are evaluated once, at the final look, with :mod:`fairskin.metrics.verdicts`.

Design
------
* **Family.** Bonferroni across the m endpoints (no Holm): every endpoint is tested at
  alpha / m, m = the number of endpoints declared in the family (fixed for the whole study, so
  the boundaries do not change when an endpoint is untestable at some look). Within an endpoint
  the alpha / m is spent across the looks. The family-wise rate of a false better/worse is
  then <= alpha by the union bound, and so is the rate of a false equivalent.
* **Spending.** Lan-DeMets O'Brien-Fleming type, alpha(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t))
  at the information fractions t_j = n_j / n_max (:func:`obf_spending`). It spends almost
  nothing at the first looks, where the t-test has 2 to 6 degrees of freedom and could detect
  only huge effects anyway, and keeps the last boundary close to the fixed-design critical value
  (2.85 against 2.59 for m = 2 and looks 3, 5, ..., 11, 12), so the power is close to the fixed
  design's at n_max (0.75 against 0.80 at its MDE, simulated). Spending functions that spend more
  early (Pocock-type, Hwang-Shih-DeCani with gamma >= 0) save at most 0.3 repeats on average in
  this range, because t-tests on 4 to 6 degrees of freedom need huge effects whatever alpha they
  get, and pay with a higher last boundary. (Confidence sequences, which allow looking after every
  repeat without a plan, are far wider at n <= 10.)
* **Better / worse** (:func:`efficacy_boundaries`): the two-sided one-sample t statistic
  t_j = mean(d) / (sd(d) / sqrt(n_j)) (ddof 1) of the current look against a critical value
  c_j calibrated by simulation under the null so that the probability of |t| crossing for the
  first time at look j is the spending increment. Under the null the whole vector (t_1, ..., t_J)
  of a study is invariant to sigma (d = sigma z gives t(d) = t(z) path by path), so one
  calibration serves every endpoint whatever its spread or units.
* **Equivalent** (:func:`equivalence_boundaries`): both TOST statistics
  (mean + margin) / se and (margin - mean) / se exceed e_j, i.e. (margin - |mean|) / se > e_j,
  with e_j calibrated so that a one-sided central-t process crosses e_j for the first time at
  look j with the spending increment of alpha / m. The least favourable truth is a difference
  exactly at +-margin (see the function).
* **Verdict at a look**, in this order of precedence: ``better`` / ``worse`` (|t| > c_j; better
  when the mean points the endpoint's better way), ``equivalent`` ((margin - |mean|) / se > e_j),
  else ``inconclusive``; ``untestable`` when those differences have no spread by
  :func:`fairskin.metrics.paired.spread_reason` or hold a non-finite value.
* **Once decided, kept.** An endpoint's verdict is the one of the first look at which it crossed a
  boundary, as a group-sequential test stops at its first crossing; the study goes on only for the
  endpoints still open, and stops when none is open or at n_max. A false verdict then implies a
  crossing of the matching boundary at some look, whose probability over all looks is the spent
  alpha / m whatever the stopping rule (which depends on the other endpoints too). Re-judging
  every endpoint afresh at each look instead would report only the stopping look's verdict and
  waste the alpha spent at the looks before: under the null with m = 2 and looks 3, 5, ..., 11,
  12 the family-wise rate falls to 0.033 instead of 0.05, and a little power with it.

The calibration and the bounds assume normal, independent paired differences, as the paired
t-test does. :func:`simulate_sequential` measures the resulting error rates, power and expected
number of repeats by simulating whole sequential studies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize, stats

from fairskin.metrics.paired import MIN_N_TTEST, spread_reason
from fairskin.metrics.verdicts import POWER, _declared, _rate, mde, repeats_for, sd_upper

CALIBRATION_DRAWS = 200_000
CALIBRATION_SEED = 0
_CHUNK = 50_000  # simulated studies per block, to bound memory at large n_max

SEQUENTIAL_COLUMNS = (
    "endpoint",
    "direction",
    "n",
    "look",
    "mean_diff",
    "low",
    "high",
    "sd",
    "t",
    "boundary",
    "t_tost",
    "equivalence_boundary",
    "verdict",
    "decided_at",
    "margin",
    "resolution",
    "m",
    "mde",
    "mde_sd_upper80",
    "repeats_for_margin",
    "reason",
)
_CODES = {0: "inconclusive", 1: "better", -1: "worse", 2: "equivalent"}


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


def _check_looks(looks_: Sequence[int]) -> tuple[int, ...]:
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


def _look_stats(
    rng: np.random.Generator, shape: tuple[int, ...], looks_: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof 1) of the first n_j of n_max iid N(0, 1) draws: two arrays ``shape + (J,)``."""
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
    for start in range(0, n_sim, _CHUNK):
        mean, sd = _look_stats(rng, (min(_CHUNK, n_sim - start),), looks_)
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
    return np.array(_boundaries(_check_looks(looks), float(alpha_per_endpoint), int(n_sim), int(seed))[0])


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
    return np.array(_boundaries(_check_looks(looks), float(alpha_per_endpoint), int(n_sim), int(seed))[1])


# --------------------------------------------------------------------------- verdicts


def _look_index(n: int, looks_: tuple[int, ...], n_max: int) -> int:
    if looks_[-1] != n_max:
        raise ValueError(f"the last look ({looks_[-1]}) must be n_max ({n_max})")
    if n not in looks_:
        raise ValueError(f"{n} paired differences is not a look of the design {list(looks_)}")
    return looks_.index(n)


def _look_verdict(d: np.ndarray, sign: int, margin: float, resolution: float, c: float, e: float) -> dict:
    """Statistics and verdict of one endpoint on the differences ``d`` of one look (see sequential_verdicts)."""
    n = len(d)
    finite = np.isfinite(d)
    if not finite.all():
        return {
            "mean_diff": math.nan,
            "sd": math.nan,
            "t": math.nan,
            "t_tost": math.nan,
            "low": math.nan,
            "high": math.nan,
            "verdict": "untestable",
            "reason": (
                f"{int((~finite).sum())} non-finite paired differences at repeats "
                f"{np.flatnonzero(~finite).tolist()}: re-run them (the boundaries hold for n "
                f"differences, none dropped)"
            ),
        }
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    reason = spread_reason(d, resolution)
    if reason:
        return {
            "mean_diff": mean,
            "sd": sd,
            "t": math.nan,
            "t_tost": math.nan,
            "low": math.nan,
            "high": math.nan,
            "verdict": "untestable",
            "reason": reason,
        }
    se = sd / math.sqrt(n)
    t, t_tost = mean / se, (margin - abs(mean)) / se
    if abs(t) > c:
        verdict = "better" if mean * sign > 0 else "worse"
    else:
        verdict = "equivalent" if t_tost > e else "inconclusive"
    return {
        "mean_diff": mean,
        "sd": sd,
        "t": t,
        "t_tost": t_tost,
        "low": mean - c * se,
        "high": mean + c * se,
        "verdict": verdict,
        "reason": "",
    }


def sequential_verdicts(
    differences: Mapping[str, Sequence[float] | np.ndarray],
    directions: Mapping[str, int],
    margins: Mapping[str, float],
    resolutions: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    n_max: int | None = None,
    looks: Sequence[int] | None = None,
    *,
    power: float = POWER,
    n_sim: int = CALIBRATION_DRAWS,
    seed: int = CALIBRATION_SEED,
) -> tuple[pd.DataFrame, bool]:
    """Verdicts of a family of primary endpoints at the current look of a sequential study, and whether to stop.

    ``differences``: endpoint -> the n paired differences so far (1-D, metric units, one per
    generator repeat) **in the order the repeats were run**: the first n_i of them are the data of
    look i. Every endpoint must have the same n, and n must be one of ``looks``. ``directions``:
    endpoint -> +1 (higher is better) or -1; ``margins``: endpoint -> equivalence margin (> 0,
    metric units, declared before the data); ``resolutions``: endpoint -> resolution (>= 0, metric
    units; missing: 0); ``alpha``: family-wise level; ``n_max``: the cap, equal to the last look;
    ``looks``: the design's repeat counts (:func:`looks`); ``power``: for the reference MDE;
    ``n_sim``, ``seed``: of the boundaries' calibration (keep the defaults, so that every look of
    a study and :func:`simulate_sequential` use the same boundaries).

    Each endpoint is tested at alpha / m, m = the number of endpoints given (Bonferroni across
    the family, no Holm; m must not change between looks), with the alpha / m spent across the
    looks by :func:`efficacy_boundaries` and :func:`equivalence_boundaries`. Every look up to n is
    evaluated on its prefix (stateless: the same call at the same data gives the same answer); an
    endpoint's verdict is that of the first look at which it was better, worse or equivalent
    (kept afterwards), else ``untestable`` when the current look's differences have no spread at
    the resolution or hold a non-finite value (re-run a failed repeat: the boundaries hold for n
    differences, so none is dropped), else ``inconclusive``.

    Returns ``(frame, stop)``. ``frame``: one row per endpoint in the order given, columns
    ``SEQUENTIAL_COLUMNS``, all of the current look (n differences) except verdict and decided_at:
    endpoint, direction, n; look (1-based index of n in ``looks``); mean_diff, sd (ddof 1); low,
    high: the repeated confidence interval mean -+ boundary x se (se = sd / sqrt(n); coverage
    >= 1 - alpha / m simultaneously over all looks); t = mean / se; boundary = c_j of the current
    look; t_tost = (margin - |mean|) / se, the smaller TOST statistic; equivalence_boundary = e_j;
    verdict; decided_at: n of the look that decided it (<NA> when open or untestable); margin,
    resolution, m; mde, mde_sd_upper80: fixed-design MDE at n repeats and alpha / m
    (:func:`fairskin.metrics.verdicts.mde`; the sequential design needs slightly more);
    repeats_for_margin (nullable Int64); reason: why the current look's statistics are NaN ("" when
    they are not). Fixed-sample p-values are not given: repeated looks invalidate them.
    ``stop``: True when every endpoint is better, worse or equivalent, or n == n_max.
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    if looks is None or n_max is None:
        raise ValueError("looks and n_max are required: the boundaries depend on the whole design")
    looks_ = _check_looks(looks)
    endpoints = list(differences)
    if not endpoints:
        raise ValueError("no endpoints given")
    direction, margin, resolution = _declared(endpoints, directions, margins, resolutions)
    arrays = [np.asarray(differences[e], dtype=float).ravel() for e in endpoints]
    lengths = {e: len(a) for e, a in zip(endpoints, arrays)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every endpoint needs the same number of paired differences, got {lengths}")
    n = len(arrays[0])
    j = _look_index(n, looks_, int(n_max))
    m = len(endpoints)
    level = alpha / m
    c = efficacy_boundaries(looks_, level, n_sim, seed)
    e = equivalence_boundaries(looks_, level, n_sim, seed)

    rows = []
    for name, d, sign, mar, res in zip(endpoints, arrays, direction, margin, resolution):
        current = _look_verdict(d, sign, mar, res, float(c[j]), float(e[j]))
        decided_at = None
        for i in range(j + 1):
            earlier = current if i == j else _look_verdict(d[: looks_[i]], sign, mar, res, float(c[i]), float(e[i]))
            if earlier["verdict"] in ("better", "worse", "equivalent"):
                current["verdict"], decided_at = earlier["verdict"], looks_[i]
                break
        tested = np.isfinite(current["t"])
        sd = current["sd"]
        rows.append(
            {
                **current,
                "endpoint": name,
                "direction": sign,
                "n": n,
                "look": j + 1,
                "boundary": float(c[j]),
                "equivalence_boundary": float(e[j]),
                "decided_at": decided_at,
                "margin": mar,
                "resolution": res,
                "m": m,
                "mde": mde(sd, n, level, power) if tested else math.nan,
                "mde_sd_upper80": mde(sd_upper(sd, n), n, level, power) if tested else math.nan,
                "repeats_for_margin": repeats_for(sd, mar, level, power) if tested else None,
            }
        )
    frame = pd.DataFrame(rows, columns=list(SEQUENTIAL_COLUMNS))
    for column in ("decided_at", "repeats_for_margin"):
        frame[column] = frame[column].astype("Int64")
    stop = bool(frame["verdict"].isin(["better", "worse", "equivalent"]).all() or n == looks_[-1])
    return frame, stop


# --------------------------------------------------------------------------- simulation


def _sequential_outcome(
    mean_z: np.ndarray,
    sd_z: np.ndarray,
    shift: np.ndarray,
    margin: np.ndarray,
    looks_: Sequence[int],
    efficacy: np.ndarray,
    equivalence: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Final verdicts and repeats used of simulated sequential studies (direction +1, resolution 0).

    ``mean_z``, ``sd_z``: (studies, m, J) mean and sd (ddof 1) of the first n_j standard normal
    noise draws; ``shift``, ``margin``: (m,) true difference and margin in sd units (d = sd x
    (shift + z)); ``efficacy``, ``equivalence``: (J,) boundaries. Returns verdict codes (studies, m)
    at the stopping look (1 better, -1 worse, 2 equivalent, 0 inconclusive; keys of ``_CODES``) and
    the repeats used (studies,), as :func:`sequential_verdicts` decides look by look.
    """
    mean = shift[None, :, None] + mean_z
    se = sd_z / np.sqrt(np.asarray(looks_, dtype=float))
    t = mean / se
    crossed = np.abs(t) > efficacy
    code = np.where(crossed, np.sign(t), np.where((margin[None, :, None] - np.abs(mean)) / se > equivalence, 2, 0))
    verdict = np.zeros(code.shape[:2], dtype=int)
    final = np.zeros_like(verdict)
    used = np.full(len(code), looks_[-1])
    running = np.ones(len(code), dtype=bool)
    for j, n in enumerate(looks_):
        verdict = np.where(verdict != 0, verdict, code[:, :, j])  # the first crossing is kept
        stop = running & (verdict != 0).all(axis=1)
        if j == len(looks_) - 1:
            stop = running
        final[stop] = verdict[stop]
        used[stop] = n
        running &= ~stop
    return final, used


def simulate_sequential(
    sds: Sequence[float],
    margins: Sequence[float] | float,
    true_diffs: Sequence[float] | None = None,
    alpha: float = 0.05,
    n_start: int = 3,
    batch: int = 2,
    n_max: int = 12,
    n_studies: int = 10_000,
    seed: int = 1,
    *,
    power: float = POWER,
    n_sim: int = CALIBRATION_DRAWS,
    calibration_seed: int = CALIBRATION_SEED,
) -> dict:
    """Error rates, power and repeats used of the sequential rule, by simulating whole studies.

    ``sds``: per endpoint, the true sd of the paired differences (metric units, > 0); ``margins``:
    per endpoint equivalence margins (> 0, metric units) or one for all; ``true_diffs``: per
    endpoint true mean difference (default 0); ``alpha``: family-wise level (alpha / m per
    endpoint); ``n_start``, ``batch``, ``n_max``: the design (:func:`looks`); ``n_studies``:
    simulated studies (>= 10 000 for rates near alpha); ``seed``: of the studies, drawn from a
    stream distinct from the boundaries' calibration (``calibration_seed``) even when the two seeds
    are equal; ``power``: for the reference MDE; ``n_sim``: the calibration's draws.

    Each study draws d ~ Normal(true_diffs[j], sds[j]) independently per endpoint and repeat,
    takes :func:`sequential_verdicts` at each look (direction +1, so a positive difference is
    ``better``) and stops as it does. Vectorised, in blocks of 50 000 studies (memory about
    4 x 50 000 x m x n_max x 8 bytes).

    Returns a dict with the inputs, ``looks``, ``boundary`` and ``equivalence_boundary`` (lists,
    t units) and, each as {count, rate, low, high} (Clopper-Pearson 95 %): ``false_better_worse``
    (studies with a better/worse on an endpoint whose true difference is 0, or pointing against
    its true sign), ``false_equivalent`` (an equivalent on an endpoint with |true difference| >=
    its margin), ``power`` (per endpoint, share of studies ending with the right better/worse on
    an endpoint with a true difference; None for null endpoints), ``power_all`` (every such
    endpoint right in the same study; None if there is none); ``expected_repeats``: {mean, sd,
    low, high} (repeats used per study, mean with its 95 % normal interval), ``stop_share``: the
    share of studies stopping at each look; ``verdict_rates``: per endpoint the share of each final
    verdict; ``mde_fixed``: per endpoint the fixed-design MDE at n_max and alpha / m
    (:func:`fairskin.metrics.verdicts.mde`, metric units), for reference.
    """
    sd = np.asarray([float(s) for s in sds])
    m = len(sd)
    if m == 0 or np.any(~np.isfinite(sd)) or np.any(sd <= 0):
        raise ValueError(f"sds must be finite and > 0, got {sd.tolist()}")
    margin = np.full(m, float(margins)) if np.isscalar(margins) else np.asarray([float(x) for x in margins])
    true = np.zeros(m) if true_diffs is None else np.asarray([float(x) for x in true_diffs])
    if len(margin) != m or len(true) != m:
        raise ValueError(f"sds, margins and true_diffs need one entry per endpoint ({m})")
    if np.any(~np.isfinite(margin)) or np.any(margin <= 0) or np.any(~np.isfinite(true)):
        raise ValueError(
            f"margins must be finite and > 0 and true_diffs finite, got {margin.tolist()}, {true.tolist()}"
        )
    if n_studies < 1:
        raise ValueError(f"n_studies must be >= 1, got {n_studies}")
    design = tuple(looks(n_start, batch, n_max))
    level = alpha / m
    c = efficacy_boundaries(design, level, n_sim, calibration_seed)
    e = equivalence_boundaries(design, level, n_sim, calibration_seed)

    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1,)))
    codes, used = [], []
    for start in range(0, n_studies, _CHUNK):
        mean_z, sd_z = _look_stats(rng, (min(_CHUNK, n_studies - start), m), design)
        code, n_used = _sequential_outcome(mean_z, sd_z, true / sd, margin / sd, design, c, e)
        codes.append(code)
        used.append(n_used)
    code, n_used = np.concatenate(codes), np.concatenate(used)

    claimed = np.abs(code) == 1
    truth = np.sign(true)[None, :]
    false_claim = claimed & ((truth == 0) | (code != truth))
    beyond = np.abs(true) >= margin
    right = claimed & (code == truth) & (truth != 0)
    effect = true != 0
    spread = float(n_used.std(ddof=1)) if n_studies > 1 else math.nan
    half = 1.959963984540054 * spread / math.sqrt(n_studies)
    return {
        "n_studies": int(n_studies),
        "alpha": alpha,
        "m": m,
        "sds": sd.tolist(),
        "margins": margin.tolist(),
        "true_diffs": true.tolist(),
        "seed": seed,
        "calibration_seed": calibration_seed,
        "n_sim": n_sim,
        "looks": list(design),
        "boundary": c.tolist(),
        "equivalence_boundary": e.tolist(),
        "false_better_worse": _rate(int(false_claim.any(axis=1).sum()), n_studies),
        "false_equivalent": _rate(int(((code == 2) & beyond[None, :]).any(axis=1).sum()), n_studies),
        "power": [_rate(int(right[:, k].sum()), n_studies) if effect[k] else None for k in range(m)],
        "power_all": _rate(int(right[:, effect].all(axis=1).sum()), n_studies) if effect.any() else None,
        "expected_repeats": {
            "mean": float(n_used.mean()),
            "sd": spread,
            "low": float(n_used.mean()) - half,
            "high": float(n_used.mean()) + half,
        },
        "stop_share": {int(n): float(np.mean(n_used == n)) for n in design},
        "verdict_rates": [{v: float(np.mean(code[:, k] == key)) for key, v in _CODES.items()} for k in range(m)],
        "mde_fixed": [mde(float(s), int(n_max), level, power) for s in sd],
    }
