"""Verdicts on a family of primary endpoints, with the effect each study could have detected.

A compared variant's primary endpoints (declared before the data, at most five) form one
family. Each endpoint j has R paired differences d_r = variant_r - baseline_r (metric units;
one per generator repeat, see :mod:`fairskin.metrics.paired`), a direction (+1 higher is
better, -1 lower is better), an equivalence margin declared in configuration (> 0, metric
units) and optionally a resolution (>= 0, metric units: the smallest spread the metric can
show, e.g. its real-vs-real floor).

Verdict, in this order of precedence (:func:`family_verdicts`):

* ``untestable``: fewer than 3 differences, or no spread (sd(d) <= resolution, all equal, or
  rounding; :func:`fairskin.metrics.paired.spread_reason`): NaN p-values and a ``reason``,
  never p = 0 or 1 by fiat;
* ``better`` / ``worse``: two-sided paired t-test, Holm-adjusted over the family's testable
  endpoints, p_holm < alpha; better when the mean difference points the endpoint's better way;
* ``equivalent``: two one-sided tests (TOST) within +-margin; TOST p = the larger one-sided p,
  Holm-adjusted over the same family separately, p_tost_holm < alpha;
* ``inconclusive``: the rest.

Minimum detectable effect (:func:`mde`): MDE = sd(d) x delta, where delta solves the
noncentral-t power equation of a two-sided paired t-test at level alpha / m (the family's
first, strictest Holm level; m = the number of testable endpoints), n = R and power 0.8:
P(|T'| > t_{1 - alpha/2m, R-1}) = 0.8 with T' ~ noncentral t(R - 1, delta sqrt(R)). It is
shown also with the one-sided 80 % upper confidence bound of sd(d) (:func:`sd_upper`; about
2.1 x sd at R = 3), and :func:`repeats_for` gives the smallest R whose MDE reaches the margin.

:func:`simulate_family_error` measures the family-wise rates of false ``better``/``worse``
and false ``equivalent`` by simulating studies from given spreads (the twin's measured
false-positive rate), with Clopper-Pearson intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from fairskin.metrics.paired import MIN_N_TTEST, ROUNDING_ULPS, holm, spread_reason

VERDICTS = ("better", "worse", "equivalent", "inconclusive", "untestable")
VERDICT_COLUMNS = (
    "endpoint",
    "direction",
    "n",
    "mean_diff",
    "low",
    "high",
    "sd",
    "p_t",
    "p_holm",
    "p_tost",
    "p_tost_holm",
    "verdict",
    "margin",
    "resolution",
    "m",
    "mde",
    "mde_sd_upper80",
    "repeats_for_margin",
    "reason",
)
POWER = 0.8
SD_UPPER_LEVEL = 0.8


# --------------------------------------------------------------------------- power


def _power(delta: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test at level alpha, n pairs, true mean / sd = delta."""
    df = n - 1
    crit = stats.t.isf(alpha / 2, df)
    nc = delta * math.sqrt(n)
    # the lower tail as sf at -nc: scipy's nct.cdf gives NaN far in the tail (df 99, nc 10).
    lower = float(stats.nct.sf(crit, df, -nc))
    return float(stats.nct.sf(crit, df, nc)) + (lower if np.isfinite(lower) else 0.0)


@lru_cache(maxsize=4096)
def _delta(n: int, alpha: float, power: float) -> float:
    """Standardised effect delta with _power(delta, n, alpha) = power (cached: MDE = sd x delta)."""
    # statsmodels' TTestPower.solve_power stops at its bracket's edge at small n and small alpha
    # (n = 3, alpha = 0.01 returns 7.17, whose power is 0.787), so the root is bracketed here until it is inside.
    high = 1.0
    while _power(high, n, alpha) < power:
        high *= 2.0
        if high > 1e8:
            return math.nan
    return float(optimize.brentq(lambda d: _power(d, n, alpha) - power, 0.0, high, xtol=1e-13, rtol=1e-13))


def mde(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided paired t-test, in the units of ``sd``.

    ``sd``: standard deviation of the paired differences (metric units, >= 0); ``n``: number
    of pairs (generator repeats); ``alpha``: the test's two-sided level (alpha / m for the first
    Holm level of a family of m); ``power``: in (alpha, 1). Returns sd x delta, delta solving the
    noncentral-t power equation (the equation statsmodels' ``TTestPower().solve_power(effect_size=None,
    nobs=n, alpha=alpha, power=power, alternative='two-sided')`` solves, solved here with a bracket that
    always holds the root). NaN when n < 2 or sd is not finite.
    """
    if n < 2 or not np.isfinite(sd):
        return math.nan
    if not 0 < alpha < 1 or not alpha < power < 1:
        raise ValueError(f"need 0 < alpha < power < 1, got alpha {alpha}, power {power}")
    if sd < 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    return float(sd) * _delta(int(n), float(alpha), float(power))


def sd_upper(sd: float, n: int, level: float = SD_UPPER_LEVEL) -> float:
    """One-sided ``level`` upper confidence bound of a standard deviation estimated from n values.

    sd x sqrt((n - 1) / chi2.ppf(1 - level, n - 1)) (same units as ``sd``); about 2.117 x sd at
    n = 3 and level 0.8. NaN when n < 2 or sd is not finite.
    """
    if n < 2 or not np.isfinite(sd):
        return math.nan
    return float(sd) * _sd_factor(int(n), float(level))


@lru_cache(maxsize=4096)
def _sd_factor(n: int, level: float) -> float:
    return math.sqrt((n - 1) / stats.chi2.ppf(1 - level, n - 1))


def repeats_for(sd: float, margin: float, alpha: float, power: float = POWER, max_n: int = 1000) -> int | None:
    """Smallest n >= 2 with ``mde(sd, n, alpha, power) <= margin`` (``sd``, ``margin``: metric units).

    None when even ``max_n`` pairs do not reach the margin, or sd is not finite. The MDE falls
    with n, so the answer is found by bisection.
    """
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be finite and > 0, got {margin}")
    if not np.isfinite(sd) or mde(sd, max_n, alpha, power) > margin:
        return None
    low, high = 1, int(max_n)  # mde(low) > margin (n = 1 has no test), mde(high) <= margin
    while high - low > 1:
        middle = (low + high) // 2
        if mde(sd, middle, alpha, power) <= margin:
            high = middle
        else:
            low = middle
    return high


# --------------------------------------------------------------------------- tests on arrays


def _tests(d: np.ndarray, margin: float, level: float) -> dict[str, np.ndarray]:
    """Paired t and TOST on each row of ``d`` (studies, n), finite values, metric units.

    Returns arrays (studies,): mean, sd (ddof 1), low, high (``level`` t-interval), p_t (two-sided
    t-test of mean 0), p_tost (max of the one-sided p of H0 mean <= -margin and H0 mean >= +margin).
    Rows without spread give inf / NaN here; the caller masks them.
    """
    n = d.shape[-1]
    mean = d.mean(axis=-1)
    if n < 2:
        nan = np.full(mean.shape, np.nan)
        return {"mean": mean, "sd": nan, "low": nan, "high": nan, "p_t": nan, "p_tost": nan}
    sd = d.std(axis=-1, ddof=1)
    se = sd / math.sqrt(n)
    df = n - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        p_t = 2 * special.stdtr(df, -np.abs(mean / se))
        p_lower = special.stdtr(df, -(mean + margin) / se)  # P(T > (mean + margin) / se)
        p_upper = special.stdtr(df, (mean - margin) / se)  # P(T < (mean - margin) / se)
        half = special.stdtrit(df, 0.5 + level / 2) * se
    return {
        "mean": mean,
        "sd": sd,
        "low": mean - half,
        "high": mean + half,
        "p_t": p_t,
        "p_tost": np.maximum(p_lower, p_upper),
    }


def _holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm adjustment of each row of ``p`` (studies, m), NaN entries left out of m (as paired.holm)."""
    tested = np.isfinite(p)
    m = tested.sum(axis=1, keepdims=True)
    order = np.argsort(np.where(tested, p, 2.0), axis=1, kind="stable")
    ranked = np.take_along_axis(np.where(tested, p, 2.0), order, axis=1)
    scaled = ranked * (m - np.arange(p.shape[1]))
    stepped = np.minimum(np.maximum.accumulate(scaled, axis=1), 1.0)
    stepped[np.arange(p.shape[1]) >= m] = np.nan
    adjusted = np.empty_like(stepped)
    np.put_along_axis(adjusted, order, stepped, axis=1)
    return adjusted


def _classify(
    mean: np.ndarray, p_holm: np.ndarray, p_tost_holm: np.ndarray, direction: np.ndarray, alpha: float
) -> np.ndarray:
    """Verdict strings (same shape as the inputs) by the module's precedence; NaN p_holm = untestable."""
    tested = np.isfinite(p_holm)
    significant = tested & (p_holm < alpha)
    toward = np.sign(mean) * direction
    equivalent = tested & ~significant & (p_tost_holm < alpha)
    return np.select(
        [~tested, significant & (toward > 0), significant & (toward < 0), equivalent],
        ["untestable", "better", "worse", "equivalent"],
        default="inconclusive",
    ).astype(object)


# --------------------------------------------------------------------------- family


@dataclass(frozen=True)
class Verdict:
    """One primary endpoint's verdict in its family (metric units unless said otherwise).

    endpoint, direction (+1 / -1); n: finite paired differences; mean_diff, low, high: mean
    difference and its t-interval (NaN bounds when n < 2 or no spread); sd: sd(d), ddof 1;
    p_t: two-sided paired t p; p_holm: Holm over the family's testable endpoints; p_tost: TOST p
    within +-margin; p_tost_holm: Holm over the same endpoints; verdict: one of ``VERDICTS``;
    margin, resolution: as declared; m: number of testable endpoints in the family; mde: minimum
    detectable effect at alpha / m, n, the given power; mde_sd_upper80: the same with the 80 %
    upper bound of sd; repeats_for_margin: smallest R whose MDE (at this sd) is <= margin, None
    beyond 1000; reason: why untestable, "" otherwise. Untestable rows have NaN p, mde and None R.
    """

    endpoint: str
    direction: int
    n: int
    mean_diff: float
    low: float
    high: float
    sd: float
    p_t: float
    p_holm: float
    p_tost: float
    p_tost_holm: float
    verdict: str
    margin: float
    resolution: float
    m: int
    mde: float
    mde_sd_upper80: float
    repeats_for_margin: int | None
    reason: str


def _declared(
    endpoints: Sequence[str],
    directions: Mapping[str, int],
    margins: Mapping[str, float],
    resolutions: Mapping[str, float] | None,
) -> tuple[list[int], list[float], list[float]]:
    out_d, out_m, out_r = [], [], []
    for e in endpoints:
        if e not in directions or directions[e] not in (-1, 1):
            raise ValueError(f"endpoint {e!r}: direction must be +1 or -1, got {directions.get(e)!r}")
        margin = float(margins[e]) if e in margins else math.nan
        if not (np.isfinite(margin) and margin > 0):
            raise ValueError(f"endpoint {e!r}: equivalence margin must be declared, finite and > 0, got {margin}")
        resolution = float((resolutions or {}).get(e, 0.0))
        if not (np.isfinite(resolution) and resolution >= 0):
            raise ValueError(f"endpoint {e!r}: resolution must be finite and >= 0, got {resolution}")
        out_d.append(int(directions[e]))
        out_m.append(float(margin))
        out_r.append(resolution)
    return out_d, out_m, out_r


def _endpoint_tests(values, margin: float, resolution: float, level: float) -> dict:
    """One endpoint's ``n``, ``reason`` and :func:`_tests` figures on its finite paired differences ``values``
    (1-D, metric units), with NaN p-values when untestable and NaN bounds without spread or with n < 2."""
    d = np.asarray(values, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = len(d)
    reason = spread_reason(d, resolution) if n >= 2 else ""
    if not reason and n < MIN_N_TTEST:
        reason = f"n = {n} paired differences: no test (n >= {MIN_N_TTEST} needed)"
    if n:
        result = {k: float(v[0]) for k, v in _tests(d[None, :], margin, level).items()}
    else:
        result = dict.fromkeys(("mean", "sd", "low", "high", "p_t", "p_tost"), math.nan)
        reason = "no finite paired differences"
    if reason:
        result.update(p_t=math.nan, p_tost=math.nan)
    if reason.startswith("no spread") or n < 2:
        result.update(low=math.nan, high=math.nan)
    return {"n": n, "reason": reason, **result}


def family_verdicts(
    differences: Mapping[str, Sequence[float] | np.ndarray],
    directions: Mapping[str, int],
    margins: Mapping[str, float],
    resolutions: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    power: float = POWER,
    *,
    level: float = 0.95,
) -> pd.DataFrame:
    """Verdicts for one family of primary endpoints (one compared variant against its baseline).

    ``differences``: endpoint -> the R paired differences d_r (1-D, metric units; non-finite
    values dropped); ``directions``: endpoint -> +1 (higher is better) or -1 (lower is better);
    ``margins``: endpoint -> equivalence margin (> 0, metric units, declared before the data;
    ValueError naming the endpoint otherwise); ``resolutions``: endpoint -> resolution (>= 0,
    metric units; missing: 0); ``alpha``: family-wise level; ``power``: for the MDE; ``level``:
    of the interval [low, high].

    The family is the endpoints passed, nothing else. m, the count for both Holm adjustments and
    for the MDE's alpha / m, is the number of *testable* endpoints (n >= 3 with spread):
    untestable ones get NaN p-values and do not count in m. See the module docstring for the
    verdicts and their precedence. Only the differences are given here, so the float-rounding
    floor of "no spread" is taken from |d|; where the compared values are much larger than their
    differences, declare the metric's resolution.

    Returns a DataFrame with one row per endpoint in the order given and columns
    ``VERDICT_COLUMNS`` (the fields of :class:`Verdict`; repeats_for_margin is a nullable Int64).
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    endpoints = list(differences)
    direction, margin, resolution = _declared(endpoints, directions, margins, resolutions)
    rows = [_endpoint_tests(differences[e], mar, res, level) for e, mar, res in zip(endpoints, margin, resolution)]

    p_holm = holm([r["p_t"] for r in rows])
    p_tost_holm = holm([r["p_tost"] for r in rows])
    m = int(np.isfinite(p_holm).sum())
    verdicts = _classify(np.array([r["mean"] for r in rows]), p_holm, p_tost_holm, np.array(direction), alpha)
    out = []
    for i, (e, row) in enumerate(zip(endpoints, rows)):
        tested = np.isfinite(p_holm[i])
        level_m = alpha / max(m, 1)
        out.append(
            Verdict(
                endpoint=e,
                direction=direction[i],
                n=row["n"],
                mean_diff=row["mean"],
                low=row["low"],
                high=row["high"],
                sd=row["sd"],
                p_t=row["p_t"],
                p_holm=float(p_holm[i]),
                p_tost=row["p_tost"],
                p_tost_holm=float(p_tost_holm[i]),
                verdict=str(verdicts[i]),
                margin=margin[i],
                resolution=resolution[i],
                m=m,
                mde=mde(row["sd"], row["n"], level_m, power) if tested else math.nan,
                mde_sd_upper80=mde(sd_upper(row["sd"], row["n"]), row["n"], level_m, power) if tested else math.nan,
                repeats_for_margin=repeats_for(row["sd"], margin[i], level_m, power) if tested else None,
                reason=row["reason"],
            )
        )
    frame = pd.DataFrame(
        {f.name: [getattr(v, f.name) for v in out] for f in fields(Verdict)}, columns=list(VERDICT_COLUMNS)
    )
    frame["repeats_for_margin"] = frame["repeats_for_margin"].astype("Int64")
    return frame


# --------------------------------------------------------------------------- simulation


def _simulated_differences(
    sds: Sequence[float], n: int, true_diffs: Sequence[float] | None, n_studies: int, seed: int
) -> np.ndarray:
    """(n_studies, m, n) paired differences, d ~ Normal(true_diffs[j], sds[j]) independently."""
    sds = np.asarray(sds, dtype=float)
    true = np.zeros_like(sds) if true_diffs is None else np.asarray(true_diffs, dtype=float)
    rng = np.random.default_rng(seed)
    return true[None, :, None] + sds[None, :, None] * rng.standard_normal((n_studies, len(sds), n))


def _simulated_verdicts(d: np.ndarray, margins: Sequence[float], alpha: float, level: float = 0.95) -> np.ndarray:
    """Verdicts (n_studies, m) of :func:`family_verdicts` (direction +1, resolution 0) on each study of ``d``."""
    studies, m, n = d.shape
    p_t = np.full((studies, m), np.nan)
    p_tost = np.full((studies, m), np.nan)
    mean = d.mean(axis=2)
    for j in range(m):
        result = _tests(d[:, j, :], margins[j], level)
        if n >= MIN_N_TTEST:
            equal = np.all(d[:, j, :] == d[:, j, :1], axis=1)
            rounding = result["sd"] <= ROUNDING_ULPS * np.finfo(float).eps * np.max(np.abs(d[:, j, :]), axis=1)
            testable = ~equal & ~rounding & (result["sd"] > 0)
            p_t[:, j] = np.where(testable, result["p_t"], np.nan)
            p_tost[:, j] = np.where(testable, result["p_tost"], np.nan)
    return _classify(mean, _holm_rows(p_t), _holm_rows(p_tost), np.ones((1, m)), alpha)


def _rate(k: int, total: int) -> dict[str, float]:
    ci = stats.binomtest(int(k), int(total)).proportion_ci(confidence_level=0.95, method="exact")
    return {"count": int(k), "rate": k / total, "low": float(ci.low), "high": float(ci.high)}


def simulate_family_error(
    sds: Sequence[float],
    n: int,
    margins: Sequence[float] | float,
    alpha: float = 0.05,
    n_studies: int = 2000,
    true_diffs: Sequence[float] | None = None,
    seed: int = 0,
) -> dict:
    """Family-wise error rates of :func:`family_verdicts` by simulation from given spreads.

    ``sds``: per endpoint, the sd of the paired differences (metric units; the measured sd(d),
    taken as the truth, so the rates are conditional on it); ``n``: repeats per study (the
    study's R, >= 2); ``margins``: per endpoint equivalence margins (> 0) or one for all;
    ``true_diffs``: per endpoint true mean difference (default 0: a null family, e.g. the twin);
    ``n_studies``: simulated studies (use >= 1000); ``seed``: numpy generator seed.

    Each study draws d ~ Normal(true_diffs[j], sds[j]) for n repeats, independently per endpoint,
    and takes the verdicts as :func:`family_verdicts` does (vectorised over studies). Returns a dict
    with ``n_studies``, ``n``, ``alpha``, ``sds``, ``margins``, ``true_diffs``, ``seed`` and, each as
    {count, rate, low, high} (Clopper-Pearson 95 %): ``false_positive`` (studies with any better /
    worse on an endpoint whose true difference is 0), ``false_equivalent`` (any equivalent on an
    endpoint with |true difference| >= its margin), ``equivalent_rate`` (any equivalent at all);
    plus ``verdict_rates``: per endpoint (index) the fraction of studies giving each verdict.
    """
    sds = [float(s) for s in sds]
    m = len(sds)
    if m == 0 or any(not (np.isfinite(s) and s >= 0) for s in sds):
        raise ValueError(f"sds must be finite and >= 0, got {sds}")
    if n < 2:
        raise ValueError(f"n must be >= 2 repeats, got {n}")
    margin = [float(margins)] * m if np.isscalar(margins) else [float(x) for x in margins]
    true = [0.0] * m if true_diffs is None else [float(x) for x in true_diffs]
    if len(margin) != m or len(true) != m:
        raise ValueError(f"sds, margins and true_diffs need one entry per endpoint ({m})")
    if any(not (np.isfinite(x) and x > 0) for x in margin):
        raise ValueError(f"margins must be finite and > 0, got {margin}")

    verdicts = _simulated_verdicts(_simulated_differences(sds, n, true, n_studies, seed), margin, alpha)
    null = np.array([t == 0 for t in true])
    beyond = np.array([abs(t) >= mg for t, mg in zip(true, margin)])
    claimed = (verdicts == "better") | (verdicts == "worse")
    equivalent = verdicts == "equivalent"
    return {
        "n_studies": int(n_studies),
        "n": int(n),
        "alpha": alpha,
        "sds": sds,
        "margins": margin,
        "true_diffs": true,
        "seed": seed,
        "false_positive": _rate(int((claimed & null).any(axis=1).sum()), n_studies),
        "false_equivalent": _rate(int((equivalent & beyond).any(axis=1).sum()), n_studies),
        "equivalent_rate": _rate(int(equivalent.any(axis=1).sum()), n_studies),
        "verdict_rates": [{v: float(np.mean(verdicts[:, j] == v)) for v in VERDICTS} for j in range(m)],
    }
