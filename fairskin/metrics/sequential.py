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

The looks, the spending and the calibrated boundaries live in
:mod:`fairskin.metrics.sequential_boundaries`; their public names stay importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fairskin.metrics.paired import spread_reason
from fairskin.metrics.sequential_boundaries import (
    CALIBRATION_DRAWS,
    CALIBRATION_SEED,
    STUDY_BLOCK,
    check_looks,
    efficacy_boundaries,
    equivalence_boundaries,
    look_stats,
    looks,
    obf_spending,
)
from fairskin.metrics.verdicts import POWER, _declared, _rate, mde, repeats_for, sd_upper

__all__ = [  # this module's names and those of the design, importable from here as before the split
    "CALIBRATION_DRAWS",
    "CALIBRATION_SEED",
    "SEQUENTIAL_COLUMNS",
    "efficacy_boundaries",
    "equivalence_boundaries",
    "looks",
    "obf_spending",
    "sequential_verdicts",
    "simulate_sequential",
]

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
_DECIDED = ("better", "worse", "equivalent")


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


def _first_decision(d: np.ndarray, sign: int, margin: float, resolution: float, looks_, j: int, c, e):
    """The statistics of look ``j`` (the current one) with the verdict of the first look up to ``j`` that
    decided, and that look's n (None when none did); ``c``, ``e``: the boundaries (J,)."""
    current = _look_verdict(d, sign, margin, resolution, float(c[j]), float(e[j]))
    decided_at = None
    for i in range(j + 1):
        earlier = (
            current if i == j else _look_verdict(d[: looks_[i]], sign, margin, resolution, float(c[i]), float(e[i]))
        )
        if earlier["verdict"] in _DECIDED:
            current["verdict"], decided_at = earlier["verdict"], looks_[i]
            break
    return current, decided_at


def _planning(sd: float, n: int, margin: float, level: float, power: float, tested: bool) -> dict:
    """``mde``, ``mde_sd_upper80`` and ``repeats_for_margin`` at n repeats and ``level`` (NaN / None untested)."""
    return {
        "mde": mde(sd, n, level, power) if tested else math.nan,
        "mde_sd_upper80": mde(sd_upper(sd, n), n, level, power) if tested else math.nan,
        "repeats_for_margin": repeats_for(sd, margin, level, power) if tested else None,
    }


def _endpoint_rows(endpoints, arrays, direction, margin, resolution, looks_, j, c, e, level, power) -> list[dict]:
    """One row (``SEQUENTIAL_COLUMNS``) per endpoint at look ``j``, as :func:`sequential_verdicts` gives them."""
    n, m = len(arrays[0]), len(endpoints)
    rows = []
    for name, d, sign, mar, res in zip(endpoints, arrays, direction, margin, resolution):
        current, decided_at = _first_decision(d, sign, mar, res, looks_, j, c, e)
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
                **_planning(current["sd"], n, mar, level, power, np.isfinite(current["t"])),
            }
        )
    return rows


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
    looks_ = check_looks(looks)
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
    level = alpha / len(endpoints)
    c = efficacy_boundaries(looks_, level, n_sim, seed)
    e = equivalence_boundaries(looks_, level, n_sim, seed)
    rows = _endpoint_rows(endpoints, arrays, direction, margin, resolution, looks_, j, c, e, level, power)
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


def _simulation_inputs(sds, margins, true_diffs, n_studies) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sds, margins and true differences of :func:`simulate_sequential` as float arrays (m,), checked."""
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
    return sd, margin, true


def _simulate_studies(seed, n_studies: int, m: int, design, shift, margin, c, e) -> tuple[np.ndarray, np.ndarray]:
    """Final verdict codes (studies, m) and repeats used (studies,) of ``n_studies`` simulated studies.

    Drawn in blocks of ``STUDY_BLOCK`` from spawn key 1 of ``seed``; ``shift``, ``margin``: (m,) in sd units."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1,)))
    codes, used = [], []
    for start in range(0, n_studies, STUDY_BLOCK):
        mean_z, sd_z = look_stats(rng, (min(STUDY_BLOCK, n_studies - start), m), design)
        code, n_used = _sequential_outcome(mean_z, sd_z, shift, margin, design, c, e)
        codes.append(code)
        used.append(n_used)
    return np.concatenate(codes), np.concatenate(used)


def _outcome_rates(code: np.ndarray, n_used: np.ndarray, true: np.ndarray, margin: np.ndarray, design) -> dict:
    """The error rates, power, repeats used and verdict shares of :func:`simulate_sequential`."""
    n_studies, m = code.shape
    claimed = np.abs(code) == 1
    truth = np.sign(true)[None, :]
    false_claim = claimed & ((truth == 0) | (code != truth))
    beyond = np.abs(true) >= margin
    right = claimed & (code == truth) & (truth != 0)
    effect = true != 0
    spread = float(n_used.std(ddof=1)) if n_studies > 1 else math.nan
    half = 1.959963984540054 * spread / math.sqrt(n_studies)
    return {
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
    }


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
    sd, margin, true = _simulation_inputs(sds, margins, true_diffs, n_studies)
    m = len(sd)
    design = tuple(looks(n_start, batch, n_max))
    level = alpha / m
    c = efficacy_boundaries(design, level, n_sim, calibration_seed)
    e = equivalence_boundaries(design, level, n_sim, calibration_seed)

    code, n_used = _simulate_studies(seed, n_studies, m, design, true / sd, margin / sd, c, e)
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
        **_outcome_rates(code, n_used, true, margin, design),
        "mde_fixed": [mde(float(s), int(n_max), level, power) for s in sd],
    }
