"""Variance components of a paired difference under the nested repeat / pool / seed design.

Design
------
The unit of a paired test is the generator repeat r = 1..R (one fine-tune with its own seed;
every variant's repeat r uses the same seed, see :mod:`fairskin.metrics.paired`). Within repeat
r there are K pools (sampling seeds k = 1..K drawn from the same fine-tuned weights) and, for
classifier endpoints, S classifier seeds s = 1..S per pool. One endpoint's data are the paired
differences d_rks = treatment - baseline (the endpoint's units), modelled as::

    d_rks = mu + a_r + b_rk + e_rks,   a_r ~ N(0, sigma2_ft), b_rk ~ N(0, sigma2_pool),
                                        e_rks ~ N(0, sigma2_cls), all independent.

sigma2_ft is the fine-tune component, sigma2_pool the pool-given-fine-tune component and
sigma2_cls the classifier-seed (residual) component, all in the endpoint's units squared.
Generation endpoints (FID, KID, ...) have no seed level: S = 1 and no classifier component.
The classifier seed s is treated as nested in the pool (a fresh draw per pool); a main effect of
seed s shared across pools would mostly cancel in the paired difference and is otherwise counted
in sigma2_cls.

Estimators (:func:`variance_components`)
----------------------------------------
* ``"moments"``: the balanced nested-ANOVA (expected-mean-square) estimator. With the mean
  squares MS_ft (between repeats, df R - 1), MS_pool (pools within repeats, df R(K - 1)) and
  MS_cls (seeds within pools, df RK(S - 1)), and E[MS_ft] = s2_cls + S s2_pool + KS s2_ft,
  E[MS_pool] = s2_cls + S s2_pool, E[MS_cls] = s2_cls::

      sigma2_cls = MS_cls, sigma2_pool = (MS_pool - MS_cls) / S, sigma2_ft = (MS_ft - MS_pool) / (K S).

  A negative estimate is truncated at 0 and a note says so (the untruncated value is in the note).
* ``"reml"``: restricted maximum likelihood through statsmodels ``MixedLM`` (groups = repeat with
  a random intercept, the pool within its repeat as a variance component, as ``vc_formula``
  ``{"pool": "0 + C(pool)"}`` would give, the residual for the seed), fitted with BFGS and with
  Nelder-Mead, keeping the higher REML log-likelihood. On balanced data REML also has a closed
  form: the REML likelihood factors over the three strata, so the restricted optimum is the
  df-weighted isotonic regression of the mean squares under E[MS_cls] <= E[MS_pool] <= E[MS_ft]
  (:func:`_reml_balanced`). When MixedLM's fit falls short of it by more than
  ``REML_LOGLIK_TOL`` nats (or fails), the closed form is reported with a note. With all moment
  estimates positive REML equals the moment estimator (MixedLM to about 1e-4 relative); when one
  is negative REML puts that component at 0 and pools its mean square with the level below, so
  the level above differs from the truncated moment estimate.

Intervals
---------
Two-sided ``level`` intervals from the nested-ANOVA mean squares, for either estimator: on
balanced data the mean squares are independent, (E[MS] / df) chi-square(df) distributed and
sufficient, so an interval built on them is valid whichever point estimator is reported.

* bottom level (sigma2_cls, or the merged level standing in for it): the exact chi-square interval
  [df MS / chi2_{1-a/2}(df), df MS / chi2_{a/2}(df)];
* the other levels, c (E[MS_1] - E[MS_2]): the modified large-sample (MLS) interval of Ting,
  Burdick, Graybill, Jeyaratnam & Lu (1990, J. Stat. Comput. Simul. 35:135-143; Burdick & Graybill
  1992, *Confidence Intervals on Variance Components*, sec. 3.2)::

      L = c [MS_1 - MS_2 - sqrt(G1^2 MS_1^2 + H2^2 MS_2^2 + G12 MS_1 MS_2)]
      U = c [MS_1 - MS_2 + sqrt(H1^2 MS_1^2 + G2^2 MS_2^2 + H12 MS_1 MS_2)]

  with G_i = 1 - df_i / chi2_{1-a/2}(df_i), H_i = df_i / chi2_{a/2}(df_i) - 1,
  G12 = ((F_hi - 1)^2 - G1^2 F_hi^2 - H2^2) / F_hi, H12 = ((1 - F_lo)^2 - H1^2 F_lo^2 - G2^2) / F_lo,
  F_hi, F_lo the upper / lower a/2 quantiles of F(df_1, df_2).

  Why MLS: it is closed form (no bootstrap, no profile fits), exact at both ends (when either mean
  square's share vanishes it reduces to the chi-square interval), and keeps near-nominal coverage
  in between, where the Satterthwaite interval under-covers when MS_2 is a large part of MS_1 and
  is undefined when MS_1 <= MS_2 (4000 simulations, R = 5, K = S = 3, sigma2 = (0.05, 1, 0.25):
  sigma2_ft covered 95 % by MLS, 26 % by Satterthwaite). Bounds are clipped to [0, inf). Coverage
  at R = 20, K = S = 3 is checked by simulation in tests/test_components.py.

The REML point estimate can fall outside the MLS interval in the rare case where a moment estimate
is negative (REML is then not a function of the level's own mean squares only).

Unbalanced data (cells missing after non-finite values are dropped, or unequal K or S): the moment
estimator raises ``ValueError``; REML still gives point estimates but the intervals are NaN with a
note (the mean squares are no longer chi-square), and R, K, S are the number of repeats and the
*largest* numbers of pools per repeat and seeds per pool (the note gives the ranges).

Confounded levels: with S = 1 (or no seed level) the classifier component cannot be told from the
pool level: sigma2_pool then estimates sigma2_pool + sigma2_cls and sigma2_cls is NaN. With K = 1
the pool component cannot be told from the fine-tune level: sigma2_ft then estimates sigma2_ft +
sigma2_pool (+ sigma2_cls when S = 1 too) and sigma2_pool is NaN. A note says which. A NaN
component in :func:`var_of_mean` and :func:`sd_per_repeat` therefore counts as 0 (its variance is
already inside the level above); planning more pools or seeds than the data had is then
conservative (it overstates the variance).

:func:`var_of_mean` gives the variance of the mean paired difference for a design (R, K, S) and
:func:`sd_per_repeat` the sd of one repeat's averaged difference, the spread the paired t-test
over R repeats sees.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ("reml", "moments")
LEVELS = ("repeat", "pool", "seed")  # top to bottom
COMPONENT = {"repeat": "sigma2_ft", "pool": "sigma2_pool", "seed": "sigma2_cls"}
# REML log-likelihood (nats) MixedLM may lose to the exact balanced optimum and still be reported
REML_LOGLIK_TOL = 1e-3
MLS_METHOD = (
    "nested-ANOVA mean squares: chi-square interval for the bottom level, "
    "modified large-sample (MLS; Ting et al. 1990) for differences of mean squares"
)


@dataclass(frozen=True)
class Components:
    """Variance components of one endpoint's paired difference (see the module docstring).

    mean: the mean paired difference (endpoint units; the grand mean, = the mean of the repeat
    means when balanced; REML's intercept otherwise). sigma2_ft, sigma2_pool, sigma2_cls: the
    components in the endpoint's units squared, >= 0; NaN when the level is absent or merged into
    the level above (see ``notes``). ci_ft, ci_pool, ci_cls: their two-sided ``level`` intervals
    (low, high), same units; NaN where the component is NaN or the design is unbalanced.
    R, K, S: repeats, pools per repeat, seeds per pool (S = 1 with no seed level; the largest
    counts when unbalanced). method: "moments" or "reml" (the point estimator actually used).
    interval_method: how the intervals were computed ("none" when unbalanced). balanced: whether
    every repeat has K pools and every pool S seeds. mean_squares / df: the nested-ANOVA mean
    squares (units squared) and their degrees of freedom by level ("repeat", "pool", "seed"),
    levels with df > 0 only; empty when unbalanced. notes: confounding, truncation, dropped
    values, optimiser warnings; empty when there is nothing to say.
    """

    mean: float
    sigma2_ft: float
    sigma2_pool: float
    sigma2_cls: float
    ci_ft: tuple[float, float]
    ci_pool: tuple[float, float]
    ci_cls: tuple[float, float]
    R: int
    K: int
    S: int
    method: str
    interval_method: str
    level: float = 0.95
    balanced: bool = True
    mean_squares: Mapping[str, float] = field(default_factory=dict)
    df: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def as_row(self) -> dict:
        """One flat dict (for a table row): the fields with the intervals split into *_low / *_high
        and the notes joined with "; "; mean_squares and df are left out."""
        row = {"mean": self.mean}
        for short in ("ft", "pool", "cls"):
            row[f"sigma2_{short}"] = getattr(self, f"sigma2_{short}")
            row[f"sigma2_{short}_low"], row[f"sigma2_{short}_high"] = getattr(self, f"ci_{short}")
        row.update(
            R=self.R,
            K=self.K,
            S=self.S,
            method=self.method,
            interval_method=self.interval_method,
            level=self.level,
            balanced=self.balanced,
            notes="; ".join(self.notes),
        )
        return row


# --------------------------------------------------------------------------- intervals


def _chi2_interval(ms: float, df: int, level: float) -> tuple[float, float]:
    """Exact interval of E[MS] for MS ~ E[MS] chi2(df) / df."""
    a = (1 - level) / 2
    return float(df * ms / stats.chi2.ppf(1 - a, df)), float(df * ms / stats.chi2.ppf(a, df))


def _mls_interval(ms1: float, df1: int, ms2: float, df2: int, c: float, level: float) -> tuple[float, float]:
    """MLS interval of c (E[MS_1] - E[MS_2]) for independent scaled chi-square mean squares, clipped at 0."""
    a = (1 - level) / 2
    g1, g2 = 1 - df1 / stats.chi2.ppf(1 - a, df1), 1 - df2 / stats.chi2.ppf(1 - a, df2)
    h1, h2 = df1 / stats.chi2.ppf(a, df1) - 1, df2 / stats.chi2.ppf(a, df2) - 1
    f_hi, f_lo = stats.f.ppf(1 - a, df1, df2), stats.f.ppf(a, df1, df2)
    g12 = ((f_hi - 1) ** 2 - g1**2 * f_hi**2 - h2**2) / f_hi
    h12 = ((1 - f_lo) ** 2 - h1**2 * f_lo**2 - g2**2) / f_lo
    v_low = g1**2 * ms1**2 + h2**2 * ms2**2 + g12 * ms1 * ms2
    v_high = h1**2 * ms1**2 + g2**2 * ms2**2 + h12 * ms1 * ms2
    est = ms1 - ms2  # untruncated: the bounds are built on the unbiased estimate
    low = c * (est - math.sqrt(max(v_low, 0.0)))
    high = c * (est + math.sqrt(max(v_high, 0.0)))
    return max(low, 0.0), max(high, 0.0)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Design:
    data: pd.DataFrame  # columns d, repeat, pool (codes unique across repeats), seed; sorted
    R: int
    K: int
    S: int
    balanced: bool
    df: dict[str, int]  # by level, all three (0 = level absent / confounded)
    has_seed: bool
    notes: tuple[str, ...]


def _design(frame: pd.DataFrame, value: str, repeat: str, pool: str, seed: str | None) -> _Design:
    columns = [repeat, pool] + ([seed] if seed is not None else [])
    missing = [c for c in [value] + columns if c not in frame.columns]
    if missing:
        raise KeyError(f"variance_components: frame has no column(s) {missing}")
    values = pd.to_numeric(frame[value], errors="coerce").astype(float)
    finite = np.isfinite(values.to_numpy())
    notes = []
    if not finite.all():
        notes.append(f"{int((~finite).sum())} non-finite value(s) of {value!r} dropped")
    data = pd.DataFrame(
        {
            "d": values[finite].to_numpy(),
            "repeat": frame[repeat].to_numpy()[finite],
            "pool": frame[pool].to_numpy()[finite],
            "seed": frame[seed].to_numpy()[finite] if seed is not None else 0,
        }
    )
    if data.empty:
        raise ValueError(f"variance_components: no finite {value!r} values")
    duplicated = data.duplicated(["repeat", "pool", "seed"])
    if duplicated.any():
        first = data.loc[duplicated, ["repeat", "pool", "seed"]].iloc[0].tolist()
        raise ValueError(
            f"variance_components: {int(duplicated.sum())} duplicate (repeat, pool"
            f"{', seed' if seed is not None else ''}) row(s), e.g. {first[: len(columns)]}; "
            "one row per cell is expected"
        )
    data = data.sort_values(["repeat", "pool", "seed"], kind="stable").reset_index(drop=True)
    # pool labels may repeat across repeats (k = 1..K in each): the pool is nested in its repeat
    data["pool"] = data.groupby(["repeat", "pool"], sort=False).ngroup()
    pools_per_repeat = data.groupby("repeat")["pool"].nunique()
    seeds_per_pool = data.groupby("pool").size()
    R, n_pools, n = len(pools_per_repeat), len(seeds_per_pool), len(data)
    if R < 2:
        raise ValueError(f"variance_components: needs at least 2 repeats, got R = {R}")
    K, S = int(pools_per_repeat.max()), int(seeds_per_pool.max())
    balanced = pools_per_repeat.nunique() == 1 and seeds_per_pool.nunique() == 1
    if not balanced:

        def span(counts: pd.Series) -> str:
            return f"{counts.min()}..{counts.max()}" if counts.nunique() > 1 else f"{counts.max()}"

        notes.append(
            f"unbalanced: {span(pools_per_repeat)} pools per repeat, {span(seeds_per_pool)} "
            "seeds per pool (K, S are the largest counts)"
        )
    df = {"repeat": R - 1, "pool": n_pools - R, "seed": n - n_pools}
    if seed is None:
        notes.append("no seed level (seed=None): no classifier component, sigma2_cls is NaN")
    elif df["seed"] == 0:
        notes.append(
            "S = 1: the classifier component is confounded with the residual (pool) level; "
            + ("sigma2_pool estimates sigma2_pool + sigma2_cls and " if df["pool"] > 0 else "")
            + "sigma2_cls is NaN"
        )
    if df["pool"] == 0:
        merged = "sigma2_ft + sigma2_pool" + (" + sigma2_cls" if df["seed"] == 0 and seed is not None else "")
        notes.append(
            f"K = 1: the pool component is confounded with the fine-tune (repeat) level; "
            f"sigma2_ft estimates {merged} and sigma2_pool is NaN"
        )
    return _Design(data, R, K, S, balanced, df, seed is not None, tuple(notes))


# --------------------------------------------------------------------------- estimators


def _mean_squares(design: _Design) -> tuple[dict[str, float], dict[str, int]]:
    """Nested-ANOVA mean squares of a balanced design, levels with df > 0 only."""
    R, K, S = design.R, design.K, design.S
    y = design.data["d"].to_numpy().reshape(R, K, S)
    pool_means = y.mean(axis=2)
    repeat_means = pool_means.mean(axis=1)
    ss = {
        "repeat": K * S * float(np.sum((repeat_means - repeat_means.mean()) ** 2)),
        "pool": S * float(np.sum((pool_means - repeat_means[:, None]) ** 2)),
        "seed": float(np.sum((y - pool_means[:, :, None]) ** 2)),
    }
    present = [lvl for lvl in LEVELS if design.df[lvl] > 0]
    return ({lvl: ss[lvl] / design.df[lvl] for lvl in present}, {lvl: design.df[lvl] for lvl in present})


def _units(design: _Design) -> dict[str, int]:
    """Observations per unit of each level (the multiplier of its component in the expected mean squares)."""
    return {"repeat": design.K * design.S, "pool": design.S, "seed": 1}


def _moments(design: _Design, ms: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """Moment estimates by level (untruncated values reported in the notes when truncated)."""
    present, units = list(ms), _units(design)
    estimates, notes = {}, []
    for i, lvl in enumerate(present):
        below = ms[present[i + 1]] if i + 1 < len(present) else 0.0
        raw = (ms[lvl] - below) / units[lvl]
        if raw < 0:
            notes.append(f"{COMPONENT[lvl]}: moment estimate {raw:.4g} < 0 truncated at 0")
        estimates[lvl] = max(raw, 0.0)
    return estimates, notes


def _intervals(
    design: _Design, ms: Mapping[str, float], df: Mapping[str, int], level: float
) -> dict[str, tuple[float, float]]:
    present, units = list(ms), _units(design)
    out = {}
    for i, lvl in enumerate(present):
        if i + 1 == len(present):
            out[lvl] = _chi2_interval(ms[lvl], df[lvl], level)
        else:
            nxt = present[i + 1]
            out[lvl] = _mls_interval(ms[lvl], df[lvl], ms[nxt], df[nxt], 1.0 / units[lvl], level)
    return out


def _lambdas(design: _Design, estimates: Mapping[str, float]) -> dict[str, float]:
    """Expected mean squares (the stratum variances) implied by components, by present level."""
    units, lam, below = _units(design), {}, 0.0
    for lvl in reversed(list(estimates)):
        below = lam[lvl] = below + units[lvl] * estimates[lvl]
    return lam


def _reml_loglik(lam: Mapping[str, float], ms: Mapping[str, float], df: Mapping[str, int]) -> float:
    """Balanced-design REML log-likelihood, up to a constant: -1/2 sum_l df_l (log lambda_l + MS_l / lambda_l)."""
    if min(lam.values()) <= 0:
        return -math.inf
    return -0.5 * sum(df[lvl] * (math.log(lam[lvl]) + ms[lvl] / lam[lvl]) for lvl in ms)


def _reml_balanced(design: _Design, ms: Mapping[str, float], df: Mapping[str, int]) -> dict[str, float]:
    """Exact REML of a balanced nested design, by present level.

    The REML likelihood factors over the strata (:func:`_reml_loglik`), each MS_l a gamma variable
    with mean lambda_l, under the order lambda_seed <= lambda_pool <= lambda_repeat that
    non-negative components impose; the restricted maximum is the df-weighted isotonic regression
    of the mean squares (pool-adjacent violators; Robertson, Wright & Dykstra 1988, ch. 1).
    """
    present = list(ms)
    blocks: list[list] = []  # [weighted mean, weight, levels], bottom level first
    for lvl in reversed(present):
        blocks.append([ms[lvl], df[lvl], [lvl]])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            top, low = blocks.pop(), blocks.pop()
            weight = top[1] + low[1]
            blocks.append([(top[0] * top[1] + low[0] * low[1]) / weight, weight, low[2] + top[2]])
    lam = {lvl: value for value, _, lvls in blocks for lvl in lvls}
    units = _units(design)
    return {
        lvl: (lam[lvl] - (lam[present[i + 1]] if i + 1 < len(present) else 0.0)) / units[lvl]
        for i, lvl in enumerate(present)
    }


def _reml(design: _Design) -> tuple[float, dict[str, float], list[str]]:
    """REML fit through statsmodels MixedLM: (intercept, estimates by present level, notes).

    groups = repeat with a random intercept; the pool within its repeat as a variance component
    (one indicator column per pool of the group, as ``vc_formula={"pool": "0 + C(pool)"}`` would
    build; built by hand so no formula is evaluated in the caller's namespace); the residual is
    the bottom level. Fitted twice, with BFGS (statsmodels' default) and Nelder-Mead, keeping the
    higher REML log-likelihood: near a zero component BFGS on MixedLM's square-root scale often
    stops short of the optimum, Nelder-Mead rarely.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM, VCSpec

    data, df = design.data, design.df
    present = [lvl for lvl in LEVELS if df[lvl] > 0]
    if present == ["repeat"]:
        # one observation per repeat: REML of iid normal data is the ddof-1 variance
        return float(data["d"].mean()), {"repeat": float(data["d"].var(ddof=1))}, []
    y = data["d"].to_numpy()
    ones = np.ones((len(y), 1))
    has_vc = present == ["repeat", "pool", "seed"]
    exog_vc = None
    if has_vc:
        mats, names = [], []
        for _, rows in data.groupby("repeat", sort=True):  # VCSpec wants the groups in sorted order
            pools = np.unique(rows["pool"])
            mats.append((rows["pool"].to_numpy()[:, None] == pools[None, :]).astype(float))
            names.append([f"pool[{p}]" for p in pools])
        exog_vc = VCSpec(["pool"], [names], [mats])
    model = MixedLM(y, ones, groups=data["repeat"].to_numpy(), exog_re=ones, exog_vc=exog_vc)
    best, best_notes = None, []
    for optimiser in ("bfgs", "nm"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = model.fit(reml=True, method=optimiser)
            except (np.linalg.LinAlgError, ValueError) as err:
                best_notes = best_notes if best is not None else [f"MixedLM ({optimiser}) failed: {err}"]
                continue
        if best is None or result.llf > best.llf:
            best = result
            best_notes = list(dict.fromkeys(f"MixedLM ({optimiser}): {w.message}" for w in caught))
            if not result.converged:
                best_notes.append(f"MixedLM ({optimiser}): the REML optimiser did not converge")
    if best is None:
        raise ValueError("; ".join(best_notes))
    estimates = {
        "repeat": max(float(best.cov_re[0, 0] if isinstance(best.cov_re, np.ndarray) else best.cov_re.iloc[0, 0]), 0.0)
    }
    if has_vc:
        estimates["pool"] = max(float(best.vcomp[0]), 0.0)
    estimates[present[-1]] = float(best.scale)
    return float(np.asarray(best.fe_params)[0]), estimates, best_notes


def _reml_estimates(design: _Design, ms: dict, dfs: dict) -> tuple[float, dict[str, float], list[str]]:
    """REML (mean, estimates by present level, notes): MixedLM (:func:`_reml`), checked on balanced data
    against the closed-form REML (:func:`_reml_balanced`) and replaced by it when MixedLM falls short."""
    mean = float(design.data["d"].mean())
    exact, best = None, math.nan
    if design.balanced:
        exact = _reml_balanced(design, ms, dfs)
        best = _reml_loglik(_lambdas(design, exact), ms, dfs)
    if float(design.data["d"].var(ddof=0)) == 0.0:
        # MixedLM cannot fit data with no spread at all
        estimates = {lvl: 0.0 for lvl in LEVELS if design.df[lvl] > 0}
        extra = ["no spread: every value is equal, all components 0"]
    elif exact is not None and not math.isfinite(best):
        estimates = exact
        extra = [
            "a mean square is 0, so the REML likelihood is unbounded and MixedLM cannot fit; the "
            "exact balanced REML (isotonic regression of the mean squares) is reported"
        ]
    else:
        try:
            mean, estimates, extra = _reml(design)
        except (np.linalg.LinAlgError, ValueError) as err:
            if not design.balanced:
                raise
            estimates, extra = None, [f"MixedLM failed: {err}"]
        if exact is not None:
            # MixedLM's optimisers can stop short of the optimum near a zero component;
            # the balanced REML has a closed form to check them against
            got = -math.inf if estimates is None else _reml_loglik(_lambdas(design, estimates), ms, dfs)
            if not best - got <= REML_LOGLIK_TOL:
                extra.append(
                    f"MixedLM fell short of the REML optimum (log-likelihood {got:.6g} < "
                    f"{best:.6g}); the exact balanced REML (isotonic regression of the mean "
                    "squares) is reported"
                )
                estimates, mean = exact, float(design.data["d"].mean())
    return mean, estimates, extra


def variance_components(
    frame: pd.DataFrame,
    value: str = "d",
    repeat: str = "repeat",
    pool: str = "pool",
    seed: str | None = "seed",
    method: str = "reml",
    level: float = 0.95,
) -> Components:
    """Estimate sigma2_ft, sigma2_pool and sigma2_cls of the paired difference ``value``.

    ``frame``: one row per (repeat, pool, seed) cell, R K S rows when balanced (per (repeat, pool)
    cell, R K rows, when ``seed`` is None, for generation endpoints) with the paired difference treatment - baseline in column ``value``
    (endpoint units); other columns are ignored. Pool labels may be reused across repeats (pool k
    of repeat r is its own pool). Non-finite values are dropped (with a note); duplicate cells
    raise ``ValueError``, as do fewer than 2 repeats.

    ``method``: "reml" (statsmodels MixedLM, the default) or "moments" (balanced nested ANOVA,
    negative estimates truncated at 0); ``level``: the intervals' two-sided confidence level.
    Intervals are chi-square / modified large-sample (MLS) intervals on the nested-ANOVA mean
    squares whichever the method (balanced designs only). Unbalanced designs: "moments" raises
    ``ValueError``; "reml" gives point estimates with NaN intervals and a note (and raises
    ``ValueError`` when MixedLM cannot fit them; on balanced data a failed or short MixedLM fit is
    replaced by the closed-form REML, with a note). Levels that cannot
    be separated (S = 1, no seed level, K = 1) are merged into the level above and reported NaN,
    with a note. The module docstring has the formulas and the reasons.

    Returns a :class:`Components`; components and bounds in the endpoint's units squared.
    """
    if method not in METHODS:
        raise ValueError(f"variance_components: method must be one of {METHODS}, got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"variance_components: level must be in (0, 1), got {level}")
    design = _design(frame, value, repeat, pool, seed)
    notes = list(design.notes)
    if not design.balanced and method == "moments":
        raise ValueError(
            "variance_components: the moment estimator needs a balanced design "
            f"({design.notes[-1] if design.notes else 'unbalanced'}); use method='reml'"
        )
    ms, dfs, intervals = {}, {}, {}
    if design.balanced:
        ms, dfs = _mean_squares(design)
        intervals = _intervals(design, ms, dfs, level)
    if method == "moments":
        estimates, extra = _moments(design, ms)
        mean = float(design.data["d"].mean())
    else:
        mean, estimates, extra = _reml_estimates(design, ms, dfs)
    notes += extra
    nan2 = (math.nan, math.nan)
    return Components(
        mean=mean,
        sigma2_ft=estimates.get("repeat", math.nan),
        sigma2_pool=estimates.get("pool", math.nan),
        sigma2_cls=estimates.get("seed", math.nan) if design.has_seed else math.nan,
        ci_ft=intervals.get("repeat", nan2),
        ci_pool=intervals.get("pool", nan2),
        ci_cls=intervals.get("seed", nan2) if design.has_seed else nan2,
        R=design.R,
        K=design.K,
        S=design.S,
        method=method,
        interval_method=MLS_METHOD if design.balanced else "none (unbalanced design)",
        level=level,
        balanced=design.balanced,
        mean_squares=ms,
        df=dfs,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- design planning


def _parts(components) -> tuple[float, float, float]:
    ft = float(components.sigma2_ft)
    pool, cls = float(components.sigma2_pool), float(components.sigma2_cls)
    # NaN below the top level means "merged into the level above" (or absent): it adds nothing
    return ft, (0.0 if math.isnan(pool) else pool), (0.0 if math.isnan(cls) else cls)


def _check_counts(**counts: int) -> None:
    for name, n in counts.items():
        if int(n) != n or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n}")


def var_of_mean(components, R: int, K: int, S: int) -> float:
    """Variance of the mean paired difference over an (R, K, S) design, endpoint units squared.

    sigma2_ft / R + sigma2_pool / (R K) + sigma2_cls / (R K S), with ``components`` a
    :class:`Components` (or anything with attributes sigma2_ft, sigma2_pool, sigma2_cls). A NaN
    sigma2_pool or sigma2_cls counts as 0 (merged into the level above, or absent; conservative
    when K or S exceed the data's); a NaN sigma2_ft gives NaN.
    """
    _check_counts(R=R, K=K, S=S)
    ft, pool, cls = _parts(components)
    return ft / R + pool / (R * K) + cls / (R * K * S)


def sd_per_repeat(components, K: int, S: int) -> float:
    """Sd of one repeat's difference averaged over K pools x S seeds, endpoint units.

    sqrt(sigma2_ft + sigma2_pool / K + sigma2_cls / (K S)): the spread of the R repeat values the
    paired t-test sees, so ``var_of_mean(c, R, K, S) == sd_per_repeat(c, K, S) ** 2 / R``. NaN
    components are handled as in :func:`var_of_mean`.
    """
    _check_counts(K=K, S=S)
    ft, pool, cls = _parts(components)
    return math.sqrt(ft + pool / K + cls / (K * S))
