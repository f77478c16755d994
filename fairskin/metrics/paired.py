"""Paired comparisons of diffusion variants over generator repeats.

Unit of analysis
----------------
The ablation runs R generator repeats x S classifier seeds per variant. A generator repeat
r is one fine-tune plus one synthetic pool with its own seed, and repeat r of every variant
uses the same r-th seed, so variants are **paired by repeat index**. The statistical unit is
the generator repeat: the S classifier seeds of a repeat are averaged into one value
(:func:`repeat_values`), and every interval and test is taken over the R repeat values.
Generation metrics (FID, KID, IS) have one value per repeat already; counting a repeat S
times would be pseudo-replication and shrink the intervals by about sqrt(S) for nothing.

Methods
-------
* :func:`t_interval`: Student-t interval of a mean, ``scipy.stats.t.interval(level, n - 1,
  loc=mean, scale=sem)`` with ``sem = scipy.stats.sem`` (ddof 1).
* :func:`paired_difference`: the differences treatment - baseline on the repeats both have;
  a t-interval of their mean, the paired t-test (``scipy.stats.ttest_rel``), and a sign-flip
  permutation test (``scipy.stats.permutation_test``; exact over all 2^n sign vectors for
  n <= 16, else 100 000 seeded Monte-Carlo flips).
* :func:`holm`: Holm-Bonferroni step-down adjusted p-values.
* :func:`tost_paired`: equivalence of two settings within a margin declared in advance (two
  one-sided paired t-tests, TOST; Schuirmann 1987): equivalent at level alpha when both one-sided
  tests reject, i.e. when the ``1 - 2 alpha`` t-interval of the mean difference lies inside the margins.
* :func:`paired_table`: every non-baseline variant x metric against the baseline, Holm
  adjusted across the whole table, with a significant / better / worse verdict.

No spread, no test
------------------
A paired difference with no spread is **untestable**: its p-values (t, sign-flip, TOST) and
interval bounds are NaN and a ``reason`` string says why; it is never given p = 0 or p = 1 by
fiat. "No spread" is decided in the metric's own units, never relative to the differences: the
sample standard deviation sd(d) (ddof 1) is at most ``resolution`` (a keyword of
:func:`t_interval`, :func:`paired_difference`, :func:`tost_paired` and :func:`paired_table`:
the metric's declared resolution or its real-vs-real floor; default 0), or the values are all
exactly equal, or sd(d) is at float64 rounding of the values compared (at most
``ROUNDING_ULPS`` x machine epsilon x their largest magnitude: the representation cannot
resolve less). So (0.80, 0.75, 0.70) against (0.81, 0.76, 0.71) is untestable, not a certain
difference of -0.01. Fewer than ``MIN_N_TTEST`` pairs give an interval but no test, with the
same ``reason`` field saying so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALTERNATIVES = ("two-sided", "greater", "less")
MIN_N_TTEST = 3  # fewer pairs: interval only, no p-value
MIN_N_PERMUTATION = 6  # fewer pairs: the smallest two-sided sign-flip p is 2/2^n > 0.05
EXACT_PERMUTATION_MAX_N = 16
MONTE_CARLO_FLIPS = 100_000
PERMUTATION_SEED = 0
# sd(d) at or below this many float64 epsilons of the compared values' magnitude is rounding, not spread.
ROUNDING_ULPS = 16


# --------------------------------------------------------------------------- per repeat


def _finite(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    values = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    return frame.assign(**{metric: values})[np.isfinite(values)]


def _seed_means(frame: pd.DataFrame, metric: str, repeat: str, seed: str | None) -> pd.Series:
    """Mean per (repeat, seed) of the finite values; index (repeat, seed), or repeat rows when seed is None."""
    finite = _finite(frame, metric)
    if seed is None:
        return finite.set_index(repeat)[metric]
    return finite.groupby([repeat, seed], sort=True)[metric].mean()


def repeat_values(frame: pd.DataFrame, metric: str, repeat: str = "repeat", seed: str | None = "seed") -> pd.Series:
    """One value per generator repeat: the mean over classifier seeds within the repeat.

    ``frame`` has one row per (repeat, seed) run with columns ``repeat``, ``seed`` and
    ``metric`` (any other columns are ignored). Non-finite metric values are ignored; a
    repeat with no finite value is dropped. Should a (repeat, seed) pair occur more than
    once, its rows are averaged first, so every seed weighs the same. ``seed=None`` treats
    every row as one seed (for frames without a seed column).

    Returns a float Series named ``metric``, indexed by repeat id (sorted), in the metric's
    own units. :func:`repeat_counts` gives the number of seeds behind each value.
    """
    means = _seed_means(frame, metric, repeat, seed)
    return means.groupby(level=0, sort=True).mean().rename(metric).rename_axis(repeat)


def repeat_counts(frame: pd.DataFrame, metric: str, repeat: str = "repeat", seed: str | None = "seed") -> pd.Series:
    """Number of classifier seeds with a finite ``metric`` behind each :func:`repeat_values` entry.

    Same index as :func:`repeat_values` (repeat ids, sorted); int values. With R repeats the
    report prints ``R = len(counts)`` and ``S = counts.max()`` (or the range when they differ).
    """
    means = _seed_means(frame, metric, repeat, seed)
    return means.groupby(level=0, sort=True).size().astype(int).rename(metric).rename_axis(repeat)


# --------------------------------------------------------------------------- one sample


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its two-sided t-interval [low, high] (the values' units).

    NaN bounds when n < 2 or the values have no spread (see :func:`spread_reason`); ``reason``
    then says which, and is "" when the interval was computed.
    """

    mean: float
    low: float
    high: float
    n: int
    reason: str = ""


def _check_resolution(resolution: float) -> float:
    resolution = float(resolution)
    if not (np.isfinite(resolution) and resolution >= 0):
        raise ValueError(f"resolution must be finite and >= 0 (metric units), got {resolution}")
    return resolution


def spread_reason(values: Sequence[float] | np.ndarray, resolution: float = 0.0, scale: float | None = None) -> str:
    """Why ``values`` (1-D, finite, n >= 2; differences or one sample, metric units) have no spread, or "".

    No spread when sd(values) (ddof 1) <= ``resolution`` (>= 0, the metric's units), when all
    values are exactly equal, or when sd is at float64 rounding: sd <= ROUNDING_ULPS x eps x
    ``scale``, with ``scale`` the largest magnitude among the numbers the values were computed
    from (default: of ``values`` themselves). The reason starts with "no spread:".
    """
    x = np.asarray(values, dtype=float).ravel()
    resolution = _check_resolution(resolution)
    if len(x) < 2:
        raise ValueError(f"spread needs n >= 2 values, got {len(x)}")
    if np.all(x == x[0]):
        return f"no spread: all {len(x)} values equal {x[0]:.6g} (sd(d) = 0 <= resolution {resolution:g})"
    sd = float(np.std(x, ddof=1))
    if sd <= resolution:
        return f"no spread: sd(d) = {sd:.3g} <= resolution {resolution:g} (metric units)"
    floor = ROUNDING_ULPS * np.finfo(float).eps * float(np.max(np.abs(x)) if scale is None else scale)
    if sd <= floor:
        return (
            f"no spread: sd(d) = {sd:.3g} <= resolution {floor:.3g} "
            f"(float64 rounding: {ROUNDING_ULPS} eps x {floor / (ROUNDING_ULPS * np.finfo(float).eps):.3g})"
        )
    return ""


def _interval(x: np.ndarray, level: float, reason: str) -> Interval:
    """t-interval of finite ``x`` given the spread verdict already taken (``reason`` "" = has spread)."""
    n = len(x)
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, 0, "no values")
    mean = float(np.mean(x))
    if n < 2:
        return Interval(mean, np.nan, np.nan, n, "n = 1: no interval (n >= 2 needed)")
    if reason:
        return Interval(mean, np.nan, np.nan, n, reason)
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
    return Interval(mean, float(low), float(high), n)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95, *, resolution: float = 0.0) -> Interval:
    """Student-t interval of the mean of ``values`` (1-D; non-finite values are dropped).

    Equals ``scipy.stats.t.interval(level, n - 1, loc=mean, scale=scipy.stats.sem(values))``.
    n = 0: all NaN; n = 1: the mean with NaN bounds; values with no spread (sd <= ``resolution``,
    metric units, or all equal; :func:`spread_reason`): the mean with NaN bounds and the reason.
    """
    resolution = _check_resolution(resolution)
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    return _interval(x, level, spread_reason(x, resolution) if len(x) >= 2 else "")


# --------------------------------------------------------------------------- paired


@dataclass(frozen=True)
class PairedDifference:
    """treatment - baseline over the n repeats both have (the metric's units).

    mean, low, high: mean difference and its t-interval (NaN bounds when n < 2 or no spread);
    p_t: paired t-test p-value (NaN when n < 3 or no spread); p_perm: sign-flip permutation
    p-value (NaN when n < 6 or no spread); keys: the paired repeat ids, sorted; dropped: repeats
    only one side had (or had a non-finite value for); method: a one-line note of what was
    computed; reason: why p_t is NaN ("no spread: ..." or too few pairs), "" when it was computed.
    """

    n: int
    mean: float
    low: float
    high: float
    p_t: float
    p_perm: float
    alternative: str
    level: float
    keys: tuple
    dropped: int
    method: str
    reason: str = ""


def _as_series(values: Mapping | pd.Series) -> pd.Series:
    series = values if isinstance(values, pd.Series) else pd.Series(dict(values), dtype=float)
    if not series.index.is_unique:
        raise ValueError(f"repeat keys are not unique: {sorted(series.index[series.index.duplicated()].tolist())}")
    series = pd.to_numeric(series, errors="coerce").astype(float)
    return series[np.isfinite(series)]


def _pairs(treatment: Mapping | pd.Series, baseline: Mapping | pd.Series) -> tuple[list, int, np.ndarray, float]:
    """(ids on both sides with finite values, how many ids were on one side only, treatment - baseline,
    the largest magnitude among the paired values: the scale of their float rounding)."""
    treatment, baseline = _as_series(treatment), _as_series(baseline)
    keys = sorted(set(treatment.index) & set(baseline.index))
    dropped = len(set(treatment.index) | set(baseline.index)) - len(keys)
    t, b = treatment.loc[keys].to_numpy(), baseline.loc[keys].to_numpy()
    scale = float(max(np.max(np.abs(t)), np.max(np.abs(b)))) if keys else 0.0
    return keys, dropped, t - b, scale


def _t_test_p(differences: np.ndarray, alternative: str, bound: float = 0.0) -> float:
    """One-sample t-test of mean(differences) against ``bound`` (against 0 it is the paired t-test,
    ``scipy.stats.ttest_rel``). NaN when the differences are all equal: no spread, no test (the
    callers decide spread with :func:`spread_reason` first; this only keeps 0/0 out)."""
    if np.all(differences == differences[0]):
        return np.nan
    return float(stats.ttest_1samp(differences, bound, alternative=alternative).pvalue)


def _spread_or_count_reason(n: int, differences: np.ndarray, resolution: float, scale: float, min_n: int) -> str:
    """Why no test can be made on ``differences`` ("" when one can): too few pairs, else no spread."""
    if n >= 2:
        reason = spread_reason(differences, resolution, scale)
        if reason:
            return reason
    return f"n = {n} paired repeats: no test (n >= {min_n} needed)" if n < min_n else ""


def _permutation_p(differences: np.ndarray, alternative: str) -> tuple[float, str]:
    """Sign-flip p-value of the mean difference; two-sided uses |mean|. Counts include the observed flips."""
    n = len(differences)
    exact = n <= EXACT_PERMUTATION_MAX_N
    if alternative == "two-sided":

        def statistic(x, axis):
            return np.abs(np.mean(x, axis=axis))

        tail = "greater"
    else:

        def statistic(x, axis):
            return np.mean(x, axis=axis)

        tail = alternative
    result = stats.permutation_test(
        (differences,),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else MONTE_CARLO_FLIPS,
        alternative=tail,
        rng=np.random.default_rng(PERMUTATION_SEED),
    )
    note = (
        f"exact sign-flip over 2^{n} = {2**n} sign vectors"
        if exact
        else f"Monte-Carlo sign-flip, {MONTE_CARLO_FLIPS} flips (seed {PERMUTATION_SEED})"
    )
    return float(result.pvalue), note


def paired_difference(
    treatment: Mapping | pd.Series,
    baseline: Mapping | pd.Series,
    level: float = 0.95,
    alternative: str = "two-sided",
    *,
    resolution: float = 0.0,
) -> PairedDifference:
    """Paired comparison of two variants over generator repeats.

    ``treatment`` and ``baseline`` map repeat id -> one value per repeat (see
    :func:`repeat_values`). Only repeat ids present, with a finite value, on both sides are
    paired; the others are ignored and counted in ``dropped``. The differences
    d_r = treatment_r - baseline_r (metric units) give:

    * mean and ``level`` t-interval of d (:func:`t_interval`) when n >= 2;
    * p_t: paired t-test, equal to ``scipy.stats.ttest_rel(treatment, baseline,
      alternative=alternative)`` on the pairs, when n >= 3; with n < 3 it is NaN and the
      table shows the interval only;
    * p_perm: sign-flip permutation test of mean(d) when n >= 6 (else NaN): under H0 each
      d_r is as likely to be -d_r. Exact over all 2^n sign vectors for n <= 16, else
      100 000 seeded Monte-Carlo flips; two-sided uses |mean|; the observed signs are
      included, p = #(stat >= observed) / #(sign vectors) ((count + 1) / (flips + 1) for
      Monte-Carlo). ``alternative`` "greater" tests treatment > baseline, "less" treatment < baseline.

    ``resolution`` (>= 0, metric units): differences with sd(d) <= resolution, all equal, or
    spread only at float rounding (:func:`spread_reason`) are untestable: p_t, p_perm, low and
    high are NaN and ``reason`` starts with "no spread:". Never p = 0 or 1 from ties.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    resolution = _check_resolution(resolution)
    keys, dropped, differences, scale = _pairs(treatment, baseline)
    n = len(keys)

    reason = _spread_or_count_reason(n, differences, resolution, scale, MIN_N_TTEST)
    no_spread = reason.startswith("no spread")
    interval = _interval(differences, level, reason if no_spread else "")
    p_t = np.nan if reason else _t_test_p(differences, alternative)
    if no_spread:
        p_perm, permutation_note = np.nan, "no permutation test (no spread)"
    elif n >= MIN_N_PERMUTATION:
        p_perm, permutation_note = _permutation_p(differences, alternative)
    else:
        p_perm, permutation_note = np.nan, f"no permutation test (n < {MIN_N_PERMUTATION})"
    t_note = (
        f"paired t ({alternative})"
        if not reason
        else "untestable, no spread"
        if no_spread
        else f"interval only, no test (n < {MIN_N_TTEST})"
    )
    method = f"n = {n} paired repeats ({dropped} unpaired dropped); {t_note}; {permutation_note}"
    return PairedDifference(
        n=n,
        mean=interval.mean,
        low=interval.low,
        high=interval.high,
        p_t=p_t,
        p_perm=p_perm,
        alternative=alternative,
        level=level,
        keys=tuple(keys),
        dropped=dropped,
        method=method,
        reason=reason,
    )


# --------------------------------------------------------------------------- multiple tests


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, same order and length as ``pvalues``.

    With the m non-NaN p-values sorted ascending p_(1) <= ... <= p_(m), the adjusted
    p_(i) is max_{j <= i} min(1, (m - j + 1) p_(j)): monotone in p and capped at 1. NaN
    entries stay NaN and do not count in m. Raises ValueError on a value outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    tested = ~np.isnan(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError(f"p-values must lie in [0, 1]: {p[tested].tolist()}")
    adjusted = np.full(p.shape, np.nan)
    m = int(tested.sum())
    order = np.argsort(p[tested], kind="stable")
    scaled = p[tested][order] * (m - np.arange(m))
    stepped = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted[np.flatnonzero(tested)[order]] = stepped
    return adjusted


# --------------------------------------------------------------------------- equivalence (TOST)


@dataclass(frozen=True)
class Equivalence:
    """treatment - baseline over n paired units, tested for equivalence within (-lower_margin, +upper_margin).

    mean, low, high: mean difference and its ``1 - 2 alpha`` t-interval (90 % for alpha 0.05; the
    interval TOST is dual to); p_lower: one-sided p of H0 mean <= -lower_margin (against mean >
    -lower_margin); p_upper: one-sided p of H0 mean >= upper_margin (against mean < upper_margin);
    p: max(p_lower, p_upper), the TOST p-value; equivalent: p < alpha (False when n < 2 or p is NaN);
    reason: why the p-values are NaN (n < 2, or "no spread: ..."), "" when they were computed.
    """

    n: int
    mean: float
    low: float
    high: float
    lower_margin: float
    upper_margin: float
    p_lower: float
    p_upper: float
    p: float
    alpha: float
    equivalent: bool
    keys: tuple
    dropped: int
    reason: str = ""


def tost_paired(
    treatment: Mapping | pd.Series,
    baseline: Mapping | pd.Series,
    margin: float,
    upper_margin: float | None = None,
    alpha: float = 0.05,
    *,
    resolution: float = 0.0,
) -> Equivalence:
    """Paired equivalence test (TOST) of treatment - baseline within (-margin, +upper_margin).

    ``treatment`` and ``baseline`` map unit id -> value; units are paired by id as in
    :func:`paired_difference` (ids on one side only, or with a non-finite value, are dropped).
    ``margin`` (> 0, metric units) must be declared before the data are seen; ``upper_margin``
    defaults to ``margin`` (symmetric). With d the n differences, mean m and standard error
    s = sd(d, ddof 1) / sqrt(n), on n - 1 degrees of freedom:

    * p_lower = P(T > (m + margin) / s) (H0: mean <= -margin), ``scipy.stats.ttest_1samp(d, -margin,
      alternative="greater")``;
    * p_upper = P(T < (m - upper_margin) / s) (H0: mean >= upper_margin), ``ttest_1samp(d,
      upper_margin, alternative="less")``;
    * equivalent when max(p_lower, p_upper) < alpha, which is the same as the ``1 - 2 alpha``
      t-interval of m lying strictly inside (-margin, upper_margin).

    Differences with no spread (sd(d) <= ``resolution``, metric units, or all equal; see
    :func:`spread_reason`) are untestable: NaN p-values and interval bounds, not equivalent, and
    ``reason`` says so (byte-identical pools are not "equivalent" by fiat). n < 2: NaN p-values,
    not equivalent.
    """
    upper = margin if upper_margin is None else upper_margin
    if not (np.isfinite(margin) and np.isfinite(upper) and margin > 0 and upper > 0):
        raise ValueError(f"equivalence margins must be finite and > 0, got -{margin} / +{upper}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    resolution = _check_resolution(resolution)
    keys, dropped, differences, scale = _pairs(treatment, baseline)
    reason = _spread_or_count_reason(len(keys), differences, resolution, scale, 2)
    interval = _interval(differences, 1 - 2 * alpha, reason if reason.startswith("no spread") else "")
    if reason:
        p_lower = p_upper = p = np.nan
    else:
        p_lower = _t_test_p(differences, "greater", bound=-margin)
        p_upper = _t_test_p(differences, "less", bound=upper)
        p = max(p_lower, p_upper)
    return Equivalence(
        n=len(keys),
        mean=interval.mean,
        low=interval.low,
        high=interval.high,
        lower_margin=float(margin),
        upper_margin=float(upper),
        p_lower=p_lower,
        p_upper=p_upper,
        p=p,
        alpha=alpha,
        equivalent=bool(np.isfinite(p) and p < alpha),
        keys=tuple(keys),
        dropped=dropped,
        reason=reason,
    )


# --------------------------------------------------------------------------- table

TABLE_COLUMNS = (
    "variant",
    "metric",
    "direction",
    "n",
    "dropped",
    "mean_diff",
    "low",
    "high",
    "p_t",
    "p_perm",
    "p_holm",
    "significant",
    "better",
    "reason",
)


def _table_inputs(values: pd.DataFrame, baseline: str, metrics, directions, resolution) -> tuple[dict, list]:
    """:func:`paired_table`'s inputs checked (``ValueError`` naming what is wrong): the resolution per
    metric and the variants in order of first appearance."""
    missing = [m for m in metrics if m not in directions]
    if missing:
        raise ValueError(f"no direction given for metrics {missing}")
    bad = {m: directions[m] for m in metrics if directions[m] not in (-1, 0, 1)}
    if bad:
        raise ValueError(f"directions must be +1, -1 or 0: {bad}")
    resolutions = (
        {m: float(resolution.get(m, 0.0)) for m in metrics}
        if isinstance(resolution, Mapping)
        else dict.fromkeys(metrics, float(resolution))
    )
    absent = [c for c in ("variant", "repeat", *metrics) if c not in values.columns]
    if absent:
        raise ValueError(f"values lacks columns {absent}")
    if values.duplicated(["variant", "repeat"]).any():
        raise ValueError("values has more than one row for some (variant, repeat); average seeds first")
    variants = list(dict.fromkeys(values["variant"]))
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not among the variants {variants}")
    return resolutions, variants


def paired_table(
    values: pd.DataFrame,
    baseline: str,
    metrics: Sequence[str],
    directions: Mapping[str, int],
    level: float = 0.95,
    alpha: float = 0.05,
    *,
    resolution: float | Mapping[str, float] = 0.0,
) -> pd.DataFrame:
    """Every non-baseline variant x metric against ``baseline``, paired by repeat.

    ``values`` has columns ``variant``, ``repeat`` and one column per metric, with one row
    per (variant, repeat) (classifier seeds already averaged, see :func:`repeat_values`).
    ``directions[metric]`` is +1 when higher is better, -1 when lower is better, 0 when the
    metric is not ranked (e.g. demographic parity, read against its oracle floor).

    One row per (variant, metric), variants in order of first appearance, then metrics in
    the order given. Columns (``TABLE_COLUMNS``): variant, metric, direction, n (paired
    repeats), dropped (unpaired repeats), mean_diff, low, high (variant - baseline and its
    ``level`` t-interval, metric units), p_t (two-sided paired t), p_perm (two-sided
    sign-flip, unadjusted, a distribution-free check), p_holm, significant, better, reason
    (why p_t is NaN: "no spread: ..." or too few pairs; "" when tested).

    ``resolution``: the metrics' resolutions in their own units, one float for all or a mapping
    metric -> float (missing metrics: 0); a row whose differences have no spread at that
    resolution is untestable (NaN p and interval bounds, see :func:`paired_difference`).

    Multiple testing: p_holm is Holm-Bonferroni over the p_t of ALL (variant, metric) rows
    of this table that have one (n >= 3), not per metric or per variant; rows without p_t
    have p_holm NaN. p_t is adjusted rather than p_perm because with R = 6 repeats the
    smallest sign-flip p (2/64) could never survive any adjustment.
    significant = p_holm < alpha (False when NaN). better = +1 when significant and
    mean_diff points the metric's better way, -1 when significant and worse, 0 otherwise
    and always 0 for direction 0.
    """
    resolutions, variants = _table_inputs(values, baseline, metrics, directions, resolution)
    by_variant = {v: rows.set_index("repeat") for v, rows in values.groupby("variant", sort=False)}
    rows = []
    for variant in (v for v in variants if v != baseline):
        for metric in metrics:
            result = paired_difference(
                by_variant[variant][metric], by_variant[baseline][metric], level, resolution=resolutions[metric]
            )
            rows.append(
                {
                    "variant": variant,
                    "metric": metric,
                    "direction": int(directions[metric]),
                    "n": result.n,
                    "dropped": result.dropped,
                    "mean_diff": result.mean,
                    "low": result.low,
                    "high": result.high,
                    "p_t": result.p_t,
                    "p_perm": result.p_perm,
                    "reason": result.reason,
                }
            )
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS[:10], "reason"])
    table["p_holm"] = holm(table["p_t"].to_numpy(dtype=float))
    table["significant"] = (table["p_holm"] < alpha).to_numpy(dtype=bool)
    sign = np.sign(table["mean_diff"].fillna(0.0).to_numpy()) * table["direction"].to_numpy()
    table["better"] = np.where(table["significant"], sign, 0).astype(int)
    return table[list(TABLE_COLUMNS)]
