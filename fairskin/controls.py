"""Controls: variants that test the engine, each with its test declared before it is run.

* ``control_drop_<group>`` (positive control): vanilla whose base and fine-tune never saw the
  group, so it is known to be worse for it. Declared: the dropped group's skin-tone agreement
  (``skin_tone_agreement_<Group>``), a one-sided paired t-test (control < vanilla) over the R
  generator repeats at ``alpha`` = 0.05; *detected* when p < alpha (R >= 3).
* ``control_mix_<group>_<pct>`` (graded positive controls, a known truth at no training cost): a
  pool, not a fine-tune. Each of the group's images is taken, seeded, from the drop control's pool
  of the same repeat with probability pct / 100 and from vanilla's otherwise (every other group's
  images are vanilla's). On a share-type endpoint (the group's skin-tone agreement) the expected
  effect is pct / 100 of the drop's measured effect; on a distance-type endpoint (the group's ITA
  W1 ratio) it grows monotonically with pct. :func:`sensitivity` tests each one-sided as the drop is
  tested; the smallest detected fraction is the engine's stated sensitivity on that preset.
* ``vanilla_twin`` (negative control): vanilla under its own generator seeds, known to be
  equivalent. Declared: the configuration's primary endpoints (``report.primary``, the same
  declaration the report uses), one Holm family, verdicts as for any variant
  (:func:`fairskin.report.primary_verdicts`); *flagged* when any verdict is better or worse. A twin
  whose pools equal vanilla's, or whose every primary difference is exactly 0, passes by accident:
  :func:`twin_control` says so (``all_zero``) and ``benchmarks/controls.py`` exits non-zero. Its
  family-wise false-positive rate is measured by simulation calibrated to its own spread
  (:func:`twin_false_positive_rate`).

Inputs are per-repeat values: one row per (variant, repeat) with metric columns (classifier ones
per downstream ``mode`` when present), as the report's ``repeats.csv`` or the evaluate stage's
``generation_table.csv`` (:func:`generation_units`) give them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fairskin.config import CONTROL_DROP_PREFIX, CONTROL_MIX_PREFIX, group_slug, parse_mix_control
from fairskin.metrics.endpoints import GENERATION_COLUMNS, Declaration
from fairskin.metrics.paired import paired_difference, spread_reason
from fairskin.metrics.verdicts import simulate_family_error
from fairskin.provenance import split_generator_id
from fairskin.report import primary_values, primary_verdicts

ALPHA = 0.05
TWIN = "vanilla_twin"
FALSE_POSITIVE_STUDIES = 2000


def generation_units(generation_table: pd.DataFrame) -> pd.DataFrame:
    """The evaluate stage's ``generation_table.csv`` (one row per generator id) as per-repeat units:
    columns ``variant``, ``repeat``, every numeric figure, and the report's column names
    (:data:`fairskin.metrics.endpoints.GENERATION_COLUMNS`) beside the evaluate summary's keys."""
    frame = generation_table.copy()
    split = [split_generator_id(g) for g in frame["variant"]]
    frame["variant"] = [v for v, _ in split]
    frame["repeat"] = [r for _, r in split]
    for column, metric, _ in GENERATION_COLUMNS:
        if metric in frame and column not in frame:
            frame[column] = frame[metric]
    return frame


def _values(units: pd.DataFrame, variant: str, column: str) -> pd.Series:
    """repeat -> value of ``column`` for ``variant``; classifier figures from downstream mode
    ``random`` (the controls' declared mode) when the units have modes."""
    return primary_values(units, variant, column, "random")


def _difference(
    units: pd.DataFrame, variant: str, baseline: str, column: str, alternative: str, level: float
) -> dict[str, Any]:
    d = paired_difference(
        _values(units, variant, column), _values(units, baseline, column), level=level, alternative=alternative
    )
    return {
        "metric": column,
        "n": d.n,
        "mean_diff": d.mean,
        "low": d.low,
        "high": d.high,
        "p": d.p_t,
        "alternative": alternative,
        "method": d.method,
    }


def _group_of(slug: str, groups: Sequence[str], control: str) -> str:
    group = next((g for g in groups if group_slug(g) == slug), None)
    if group is None:
        raise ValueError(f"{control!r} names no group of {list(groups)}")
    return group


def drop_control(
    units: pd.DataFrame,
    control: str,
    groups: Sequence[str],
    baseline: str = "vanilla",
    alpha: float = ALPHA,
    level: float = 0.95,
) -> dict[str, Any]:
    """The declared test of ``control_drop_<group>``: its group's skin-tone agreement minus the
    baseline's, paired by repeat, one-sided (less); ``detected`` when n >= 3 and p < ``alpha``."""
    group = _group_of(control.removeprefix(CONTROL_DROP_PREFIX), groups, control)
    column = f"skin_tone_agreement_{group}"
    out = _difference(units, control, baseline, column, "less", level)
    detected = out["n"] >= 3 and np.isfinite(out["p"]) and out["p"] < alpha
    baseline_mean = float(_values(units, baseline, column).mean())
    chance = 1.0 / len(groups)
    why = "" if out["n"] >= 3 else f"R = {out['n']} paired repeats: no test (R >= 3 needed)"
    uninformative = bool(np.isfinite(baseline_mean) and baseline_mean <= chance)
    if uninformative:
        # A baseline that already draws the group in another group's tone leaves nothing to drop: a miss
        # then says the generator is too weak for the question, not that the engine is blind.
        why = "; ".join(
            w
            for w in (
                why,
                f"{baseline}'s own {column} is {baseline_mean:.3f}, at or below chance "
                f"(1/{len(groups)}): the control has nothing to drop, so it cannot "
                "show the engine sees a drop",
            )
            if w
        )
    return {
        "control": control,
        "group": group,
        "alpha": alpha,
        **out,
        "baseline_mean": baseline_mean,
        "uninformative": uninformative,
        "detected": bool(detected),
        "why": why,
    }


def _twin_differences(units: pd.DataFrame, declaration: Declaration, twin: str, baseline: str) -> dict[str, np.ndarray]:
    out = {}
    for endpoint in declaration.primary:
        a = primary_values(units, twin, endpoint, declaration.mode)
        b = primary_values(units, baseline, endpoint, declaration.mode)
        keys = sorted(set(a.index) & set(b.index))
        out[endpoint] = (a.loc[keys] - b.loc[keys]).to_numpy(float)
    return out


def twin_control(
    units: pd.DataFrame,
    declaration: Declaration | None = None,
    twin: str = TWIN,
    baseline: str = "vanilla",
    level: float = 0.95,
) -> dict[str, Any]:
    """The declared tests of the twin: the primary endpoints' verdicts against ``baseline`` (one
    Holm family). ``flagged`` when any is better or worse; ``tested``: endpoints with a verdict
    other than untestable; ``missing``: endpoints this run did not measure; ``all_zero``: every
    measured per-repeat difference on every primary endpoint is exactly 0 (identical pools: the
    twin cannot fail, so it proves nothing)."""
    declaration = declaration or Declaration(alpha=ALPHA)
    verdicts = primary_verdicts(units[units["variant"].isin([twin, baseline])], baseline, declaration, level)
    rows = verdicts[verdicts["variant"] == twin].to_dict("records")
    missing = [r["endpoint"] for r in rows if r["reason"] == "not measured by this run"]
    differences = [d for d in _twin_differences(units, declaration, twin, baseline).values() if len(d)]
    all_zero = bool(differences) and all(np.all(d == 0) for d in differences)
    return {
        "control": twin,
        "alpha": declaration.alpha,
        "tests": rows,
        "missing": missing,
        "tested": sum(r["verdict"] != "untestable" for r in rows),
        "flagged": any(r["verdict"] in ("better", "worse") for r in rows),
        "all_zero": all_zero,
    }


def twin_false_positive_rate(
    units: pd.DataFrame,
    declaration: Declaration | None = None,
    twin: str = TWIN,
    baseline: str = "vanilla",
    n_studies: int = FALSE_POSITIVE_STUDIES,
    seed: int = 0,
) -> dict[str, Any]:
    """The twin's family-wise rate of a false better / worse, by simulation: ``n_studies`` studies
    at the study's R, each endpoint's paired differences Normal(0, the twin's measured sd(d)),
    verdicts as the report takes them (:func:`fairskin.metrics.verdicts.simulate_family_error`).
    Returns {rate, low, high (Clopper-Pearson 95 %), count, n_studies, n, endpoints, sds}; rate NaN
    when fewer than 3 repeats or no endpoint has spread."""
    declaration = declaration or Declaration(alpha=ALPHA)
    differences = _twin_differences(units, declaration, twin, baseline)
    usable = {e: d for e, d in differences.items() if len(d) >= 3 and not spread_reason(d, declaration.resolution(e))}
    n = min((len(d) for d in usable.values()), default=0)
    if not usable or n < 3:
        return {
            "rate": float("nan"),
            "low": float("nan"),
            "high": float("nan"),
            "count": 0,
            "n_studies": 0,
            "n": n,
            "endpoints": [],
            "sds": [],
        }
    sds = [float(np.std(d, ddof=1)) for d in usable.values()]
    sim = simulate_family_error(
        sds, n, [declaration.margins[e] for e in usable], alpha=declaration.alpha, n_studies=n_studies, seed=seed
    )
    fp = sim["false_positive"]
    return {
        "rate": fp["rate"],
        "low": fp["low"],
        "high": fp["high"],
        "count": fp["count"],
        "n_studies": n_studies,
        "n": n,
        "endpoints": list(usable),
        "sds": sds,
    }


def sensitivity(
    units: pd.DataFrame, groups: Sequence[str], baseline: str = "vanilla", alpha: float = ALPHA, level: float = 0.95
) -> list[dict[str, Any]]:
    """The sensitivity curve: for every ``control_drop_<group>`` (fraction 1.0) and
    ``control_mix_<group>_<pct>`` (fraction pct / 100) in ``units``, the paired effect against
    ``baseline`` on the group's share-type endpoint (skin-tone agreement, one-sided less) and its
    distance-type endpoint (ITA W1 ratio, one-sided greater, where measured): ``effect``, ``low``,
    ``high`` (two-sided ``level`` interval), ``p`` (one-sided), ``detected`` (n >= 3 and p < alpha)
    and, on the share-type endpoint, ``expected`` = fraction x the drop's measured effect."""
    variants = list(dict.fromkeys(units["variant"]))
    rows = []
    drop_effect: dict[str, float] = {}
    controls = [
        (v, 1.0, _group_of(v.removeprefix(CONTROL_DROP_PREFIX), groups, v))
        for v in variants
        if v.startswith(CONTROL_DROP_PREFIX)
    ]
    for v in variants:
        if v.startswith(CONTROL_MIX_PREFIX):
            slug, pct = parse_mix_control(v)
            controls.append((v, pct / 100.0, _group_of(slug, groups, v)))
    for control, fraction, group in controls:
        for kind, column, alternative in (
            ("share", f"skin_tone_agreement_{group}", "less"),
            ("distance", f"skin_tone_w1_ratio_{group}", "greater"),
        ):
            if column not in units or _values(units, control, column).empty:
                continue
            interval = _difference(units, control, baseline, column, "two-sided", level)
            one_sided = _difference(units, control, baseline, column, alternative, level)
            if fraction == 1.0:
                drop_effect[column] = interval["mean_diff"]
            rows.append(
                {
                    "control": control,
                    "group": group,
                    "fraction": fraction,
                    "endpoint": column,
                    "kind": kind,
                    "n": interval["n"],
                    "effect": interval["mean_diff"],
                    "low": interval["low"],
                    "high": interval["high"],
                    "p": one_sided["p"],
                    "detected": bool(one_sided["n"] >= 3 and np.isfinite(one_sided["p"]) and one_sided["p"] < alpha),
                }
            )
    for row in rows:
        row["expected"] = (
            row["fraction"] * drop_effect[row["endpoint"]]
            if row["kind"] == "share" and row["endpoint"] in drop_effect
            else float("nan")
        )
    return sorted(rows, key=lambda r: (r["group"], r["endpoint"], r["fraction"]))


def stated_sensitivity(curve: Sequence[dict[str, Any]]) -> float | None:
    """The smallest fraction detected on any endpoint of the curve (None when none is)."""
    detected = [r["fraction"] for r in curve if r["detected"]]
    return min(detected) if detected else None


def controls_report(
    units: pd.DataFrame,
    groups: Sequence[str],
    baseline: str = "vanilla",
    declaration: Declaration | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Every control present in ``units``: ``drop`` (one entry per dropped group), ``twin`` (with its
    simulated ``false_positive_rate``), the ``sensitivity`` curve and the stated sensitivity."""
    declaration = declaration or Declaration(alpha=ALPHA)
    alpha = declaration.alpha
    variants = set(units["variant"])
    drops = [
        drop_control(units, v, groups, baseline, alpha, level)
        for v in sorted(variants)
        if v.startswith(CONTROL_DROP_PREFIX)
    ]
    twin = twin_control(units, declaration, TWIN, baseline, level) if TWIN in variants else None
    if twin is not None:
        twin["false_positive_rate"] = twin_false_positive_rate(units, declaration, TWIN, baseline)
    curve = sensitivity(units, groups, baseline, alpha, level)
    return {
        "baseline": baseline,
        "repeats": int(units.loc[units["variant"] == baseline, "repeat"].nunique()),
        "declaration": declaration.as_dict(),
        "drop": drops,
        "twin": twin,
        "sensitivity": curve,
        "stated_sensitivity": stated_sensitivity(curve),
        "drop_detected": bool(drops) and all(d["detected"] for d in drops),
        "twin_not_flagged": twin is not None and twin["tested"] > 0 and not twin["flagged"],
    }
