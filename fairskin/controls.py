"""Controls: two variants that test the engine, each with its test declared before it is run.

* ``control_drop_<group>`` (positive control): vanilla whose base and fine-tune never saw the
  group, so it is known to be worse for it. Declared: **one** metric, the dropped group's
  skin-tone agreement (``skin_tone_agreement_<Group>``), and a one-sided paired t-test
  (control < vanilla) over the R generator repeats at ``alpha`` = 0.05. The control is
  *detected* when p < alpha. R >= 3 is needed for any test (with R = 2 the t-test has one degree
  of freedom and the engine shows intervals only); the effect is large (the group's agreement
  falls from its vanilla level towards 0), so R = 3 suffices: with a difference of d and a
  between-repeat standard deviation s of the paired differences, the one-sided t-test at R = 3
  (2 degrees of freedom, t_0.95 = 2.92) rejects once d / (s / sqrt 3) > 2.92, i.e. d > 1.7 s.
* ``vanilla_twin`` (negative control): vanilla under its own generator seeds, known to be
  equivalent. Declared: the main metrics (:data:`TWIN_METRICS`: accuracy, worst-group accuracy,
  FID variance over subclasses, skin-tone agreement, disease fidelity), two-sided paired
  t-tests with Holm's adjustment across them at ``alpha``; the twin is *not flagged* when no
  adjusted p is below alpha. On a correct engine this still fails about ``alpha`` = 5 % of the
  time (Holm controls the family-wise error at alpha), which is why the intervals are reported
  too: they show how wide the noise between two equivalent generators is.

Inputs are per-repeat values: one row per (variant, repeat) with metric columns, as the
report's ``repeats.csv`` (classifier metrics averaged over a repeat's seeds) or the evaluate
stage's ``generation_table.csv`` (:func:`generation_units`) give them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fairskin.config import CONTROL_DROP_PREFIX, group_slug
from fairskin.metrics.paired import holm, paired_difference
from fairskin.provenance import split_generator_id

ALPHA = 0.05
# (units column, what it is): the twin's declared family. Report column names (fairskin.report).
TWIN_METRICS = (
    ("accuracy", "classifier accuracy (test)"),
    ("worst_group_accuracy", "worst-group accuracy (test)"),
    ("fid_var_subclass", "FID variance over subclasses"),
    ("skin_tone", "skin-tone agreement"),
    ("disease_fidelity", "disease fidelity"),
)
# evaluate summary key -> report column where the two names differ (units built from the evaluate stage alone).
GENERATION_RENAMES = {"skin_tone_agreement": "skin_tone", "skin_tone_agreement_worst_group": "skin_tone_worst"}


def generation_units(generation_table: pd.DataFrame) -> pd.DataFrame:
    """The evaluate stage's ``generation_table.csv`` (one row per generator id) as per-repeat units:
    columns ``variant``, ``repeat``, every numeric figure, and the report's names for the main ones."""
    frame = generation_table.copy()
    split = [split_generator_id(g) for g in frame["variant"]]
    frame["variant"] = [v for v, _ in split]
    frame["repeat"] = [r for _, r in split]
    for source, column in GENERATION_RENAMES.items():
        if source in frame:
            frame[column] = frame[source]
    return frame


def _values(units: pd.DataFrame, variant: str, column: str) -> pd.Series:
    """repeat -> value of ``column`` for ``variant``; classifier figures from downstream mode
    ``random`` (the controls' declared mode) when the units have modes."""
    part = units[units["variant"] == variant]
    if "mode" in part and (part["mode"] == "random").any():
        part = part[part["mode"] == "random"]
    if column not in part or not len(part):
        return pd.Series(dtype=float)
    values = pd.to_numeric(part[column], errors="coerce")
    return values.groupby(part["repeat"]).mean().dropna()


def _difference(units: pd.DataFrame, variant: str, baseline: str, column: str, alternative: str,
                level: float) -> dict[str, Any]:
    d = paired_difference(_values(units, variant, column), _values(units, baseline, column), level=level,
                          alternative=alternative)
    return {"metric": column, "n": d.n, "mean_diff": d.mean, "low": d.low, "high": d.high, "p": d.p_t,
            "alternative": alternative, "method": d.method}


def drop_control(units: pd.DataFrame, control: str, groups: Sequence[str], baseline: str = "vanilla",
                 alpha: float = ALPHA, level: float = 0.95) -> dict[str, Any]:
    """The declared test of ``control_drop_<group>``: its group's skin-tone agreement minus the
    baseline's, paired by repeat, one-sided (less); ``detected`` when n >= 3 and p < ``alpha``."""
    slug = control.removeprefix(CONTROL_DROP_PREFIX)
    group = next((g for g in groups if group_slug(g) == slug), None)
    if group is None:
        raise ValueError(f"{control!r} names no group of {list(groups)}")
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
        why = "; ".join(w for w in (why, f"{baseline}'s own {column} is {baseline_mean:.3f}, at or below chance "
                                          f"(1/{len(groups)}): the control has nothing to drop, so it cannot "
                                          "show the engine sees a drop") if w)
    return {"control": control, "group": group, "alpha": alpha, **out, "baseline_mean": baseline_mean,
            "uninformative": uninformative,
            "detected": bool(detected), "why": why}


def twin_control(units: pd.DataFrame, twin: str = "vanilla_twin", baseline: str = "vanilla",
                 metrics: Sequence[tuple[str, str]] = TWIN_METRICS, alpha: float = ALPHA,
                 level: float = 0.95) -> dict[str, Any]:
    """The declared tests of the twin: each of ``metrics`` two-sided, Holm across those tested;
    ``flagged`` when an adjusted p is below ``alpha``. Metrics absent from ``units`` are listed
    in ``missing`` (not tested), and with fewer than 3 repeats nothing is tested."""
    rows, missing = [], []
    for column, label in metrics:
        if column not in units or _values(units, twin, column).empty:
            missing.append(column)
            continue
        rows.append({**_difference(units, twin, baseline, column, "two-sided", level), "label": label})
    p = np.array([r["p"] for r in rows], float)
    tested = np.isfinite(p)
    adjusted = np.full(len(rows), math.nan)
    if tested.any():
        adjusted[tested] = holm(p[tested])
    for row, value in zip(rows, adjusted):
        row["p_holm"] = float(value)
    flagged = bool(np.nan_to_num(adjusted, nan=1.0).min(initial=1.0) < alpha)
    return {"control": twin, "alpha": alpha, "tests": rows, "missing": missing, "tested": int(tested.sum()),
            "flagged": flagged}


def controls_report(units: pd.DataFrame, groups: Sequence[str], baseline: str = "vanilla",
                    alpha: float = ALPHA, level: float = 0.95) -> dict[str, Any]:
    """Every control present in ``units``: ``drop`` (one entry per dropped group) and ``twin``."""
    variants = set(units["variant"])
    drops = [drop_control(units, v, groups, baseline, alpha, level)
             for v in sorted(variants) if v.startswith(CONTROL_DROP_PREFIX)]
    twin = twin_control(units, "vanilla_twin", baseline, alpha=alpha, level=level) if "vanilla_twin" in variants else None
    return {"baseline": baseline, "repeats": int(units.loc[units["variant"] == baseline, "repeat"].nunique()),
            "drop": drops, "twin": twin,
            "drop_detected": bool(drops) and all(d["detected"] for d in drops),
            "twin_not_flagged": twin is not None and twin["tested"] > 0 and not twin["flagged"]}
