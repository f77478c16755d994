"""Table 1 and Table 2, and the per-repeat units they are built from: one row per (variant, mode,
generator repeat), the repeat's classifier seeds averaged first; intervals are over the R repeat values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from fairskin.metrics.endpoints import CLASSIFIER_COLUMNS, GENERATION_COLUMNS
from fairskin.metrics.paired import repeat_values, t_interval
from fairskin.report.result import ReportError

PER_GROUP_PREFIXES = (
    "metrics.fid_",
    "metrics.skin_tone_agreement_",
    "metrics.ita_in_band_",
    "metrics.disease_fidelity_",
    "metrics.skin_tone_w1_ratio_",
    "metrics.skin_tone_spread_ratio_",
)


def unit_frame(trials: pd.DataFrame, evaluated: pd.DataFrame, seeds: int | None = None) -> pd.DataFrame:
    """One row per (variant, mode, repeat): classifier figures averaged over the repeat's
    classifier seeds (``seeds`` column: how many), and the generation figures of the
    evaluate run that measured the same pool (NaN where none did).

    Raises :class:`ReportError` when one generator's trials drew from more than one pool.
    """
    if not len(trials):
        return pd.DataFrame()
    if seeds is not None:
        trials = trials[trials["seed"].isin(sorted(trials["seed"].dropna().unique())[:seeds])]
    if "pool_seed" not in trials:  # frames made before generation.pool_seeds: one pool per generator
        trials = trials.assign(pool_seed=0)
    mixed = trials.groupby(["variant", "repeat", "pool_seed"])["pool"].nunique()
    if (mixed > 1).any():
        bad = [f"{v} repeat {r}" + (f" pool seed {k}" if k else "") for (v, r, k) in mixed[mixed > 1].index]
        raise ReportError(
            f"the trials of {bad} drew from more than one pool (fingerprints differ); "
            "a row must hold one pool: rerun the study on the current pools"
        )
    # A repeat's value is the mean over its (pool, classifier seed) cells: with K pools and S seeds each, K x S.
    trials = trials.assign(_cell=trials["pool_seed"].astype(str) + ":" + trials["seed"].astype(str))
    rows = []
    for (variant, mode), part in trials.groupby(["variant", "mode"], sort=True):
        values = {
            c: repeat_values(part, f"metrics.{m}", seed="_cell")
            for c, m, _ in CLASSIFIER_COLUMNS
            if f"metrics.{m}" in part
        }
        floor = (
            repeat_values(part, "metrics.test_dp_oracle_floor", seed="_cell")
            if "metrics.test_dp_oracle_floor" in part
            else None
        )
        groups = [
            c.removeprefix("metrics.")
            for c in part.columns
            if c.startswith("metrics.test_accuracy_") and not c.endswith(("_low", "_high"))
        ]
        for repeat, rpart in part.groupby("repeat", sort=True):
            pools = list(rpart.sort_values("pool_seed")["pool"].drop_duplicates())
            row: dict[str, Any] = {
                "variant": variant,
                "mode": mode,
                "repeat": int(repeat),
                "pool": ";".join(pools),  # the fingerprints of the repeat's K pools, in pool-seed order
                "pools": len(pools),
                "seeds": int(rpart["seed"].nunique()),
                "trials": len(rpart),
            }
            for column, series in values.items():
                row[column] = float(series.get(repeat, math.nan))
            row["dp_oracle_floor"] = float(floor.get(repeat, math.nan)) if floor is not None else math.nan
            for key in groups:
                row[key] = float(pd.to_numeric(rpart[f"metrics.{key}"], errors="coerce").mean())
            ev = _generation_means(evaluated, pools)
            for column, metric, _ in GENERATION_COLUMNS:
                key = f"metrics.{metric}"
                row[column] = float(ev[key]) if ev is not None and key in ev and pd.notna(ev[key]) else math.nan
            if ev is not None:  # per-group figures too (a control's declared metric is one group's)
                row.update(
                    {
                        k.removeprefix("metrics."): float(v)
                        for k, v in ev.items()
                        if str(k).startswith(PER_GROUP_PREFIXES) and pd.notna(v)
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _generation_means(evaluated: pd.DataFrame, pools: Sequence[str]) -> pd.Series | None:
    """The evaluate runs' figures of ``pools`` (fingerprints) averaged over the pools an evaluate run measured
    (numeric columns; the run itself for one pool); None when none was measured."""
    if not len(evaluated):
        return None
    found = [p for p in pools if p and p in evaluated.index]
    if not found:
        return None
    if len(found) == 1:
        return evaluated.loc[found[0]]
    part = evaluated.loc[found]
    return part[[c for c in part.columns if str(c).startswith("metrics.")]].apply(pd.to_numeric, errors="coerce").mean()


def table1(units: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Variant x mode rows: R (repeats), S (classifier seeds per repeat), and for every column
    the mean over repeats with its t-interval over the R repeat values (``<col>_low/_high``)."""
    if not len(units):
        return pd.DataFrame()
    rows = []
    for (variant, mode), part in units.groupby(["variant", "mode"], sort=True):
        s_min, s_max = int(part["seeds"].min()), int(part["seeds"].max())
        row: dict[str, Any] = {
            "variant": variant,
            "mode": mode,
            "R": int(part["repeat"].nunique()),
            "S": str(s_min) if s_min == s_max else f"{s_min}-{s_max}",
            "trials": int(part["trials"].sum()),
        }
        for column, _, _ in CLASSIFIER_COLUMNS + GENERATION_COLUMNS:
            values = part[column] if column in part else pd.Series(dtype=float)
            iv = t_interval(values.to_numpy(float), level)
            row[column], row[f"{column}_low"], row[f"{column}_high"] = iv.mean, iv.low, iv.high
        row["dp_oracle_floor"] = float(part["dp_oracle_floor"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def table2_columns(groups: Sequence[str]) -> list[str]:
    """Table 2's columns: the count-weighted group FIDs (``fid_<group>``, named by the group), then the pooled
    FIDs with the pool subsampled to the real mix (``pooled <group>``, ``pooled overall``)."""
    return [*groups, *[f"pooled {g}" for g in groups], "pooled overall"]


def _table2_metric(column: str) -> str:
    return f"fid_pooled_{column.removeprefix('pooled ')}" if column.startswith("pooled ") else f"fid_{column}"


def table2(units: pd.DataFrame, groups: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """FID per group per variant: mean over generator repeats (one value per repeat) with ``R``; the
    count-weighted means of subclass FIDs (``<group>``) beside the pooled FIDs (``pooled <group>``,
    ``pooled overall``: the pool subsampled to the real mix, see ``fairskin.metrics.generation.pooled_summary``)."""
    if not len(units):
        return pd.DataFrame()
    per_generator = units.drop_duplicates(["variant", "repeat"])
    rows = []
    for variant, part in per_generator.groupby("variant", sort=True):
        row: dict[str, Any] = {"variant": variant, "R": int(part["repeat"].nunique())}
        for g in table2_columns(groups):
            metric = _table2_metric(g)
            values = part[metric] if metric in part else pd.Series(dtype=float)
            iv = t_interval(values.to_numpy(float), level)
            row[g], row[f"{g}_low"], row[f"{g}_high"] = iv.mean, iv.low, iv.high
        rows.append(row)
    return pd.DataFrame(rows)
