"""The ablation report: the paper's tables and figures rebuilt from MLflow, with repeats and paired differences.

**Which runs.** Runs are joined by their provenance tags (:mod:`fairskin.provenance`), never
by "latest": the study's trial runs name the pool each drew from (``fairskin.pool_fingerprint``);
an ``evaluate`` run enters a row only when it measured that same pool; the reference run
is the one of the study's own pipeline (its ``reference`` stage key) on the same real shards.
Separately run studies (``aug_count`` for Figure 3b, ``ethnic_ratio`` for Figure 5) belong
to the report when every pool they drew from is one of the report's pools. The fingerprints
are listed under the tables.

**Repeats.** A variant's figures come from R generator repeats (a fine-tune and its pool,
seeded by ``diffusion.repeat_seeds[r]``) x S classifier seeds. The unit is the generator
repeat: the S seeds of a repeat are averaged into one value, and intervals are Student-t
intervals over the R repeat values (FID, KID, IS have one value per repeat). Every row says
R and S. With R = 1 there is no interval.

**Paired differences.** Repeat r of every variant shares repeat r's seed (and its pool noise),
so variants are compared *paired by repeat* against a baseline variant (default ``vanilla``):
the R within-repeat differences, their t-interval, the paired t-test p-value (R >= 3) and an
exact sign-flip permutation p-value (R >= 6) (:mod:`fairskin.metrics.paired`). These are
exploratory. **Verdicts** are given on the primary endpoints declared in the configuration
(``report.primary``, :mod:`fairskin.metrics.endpoints`) only: one Holm family per compared
variant over them (controls included, each its own family), better / worse / equivalent (TOST
within the declared margin) / inconclusive (with the minimum detectable effect) / untestable
(:mod:`fairskin.metrics.verdicts`). A Table 1 cell is marked ``▲`` (better) or ``▼`` (worse) only
where a primary verdict says so; no other "best" is claimed.
Demographic parity is not ranked: a classifier that always answers one disease has DP = 0,
and a perfect one has DP = its oracle floor, which is shown beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.io import atomic_write_text

# (column, MLflow metric, direction) of every report metric: +1 higher is better, -1 lower, 0 not ranked.
from fairskin.metrics.endpoints import (
    CLASSIFIER_COLUMNS,
    CLASSIFIER_KEYS,
    GENERATION_COLUMNS,
    LABELS,
    MODES,
    Declaration,
)
from fairskin.metrics.endpoints import DIRECTIONS as DIRECTIONS_OF
from fairskin.metrics.paired import paired_table, repeat_values, t_interval
from fairskin.metrics.verdicts import VERDICT_COLUMNS, family_verdicts
from fairskin.provenance import TAG_POOL, TAG_REAL, TAG_REPEAT, TAG_STAGE_KEY, TAG_VARIANT

PER_GROUP_PREFIXES = (
    "metrics.fid_",
    "metrics.skin_tone_agreement_",
    "metrics.ita_in_band_",
    "metrics.disease_fidelity_",
    "metrics.skin_tone_w1_ratio_",
    "metrics.skin_tone_spread_ratio_",
)
GENERATION_BLOCK = "generation"


class ReportError(ValueError):
    """Runs that cannot be put together honestly (e.g. one generator's trials drew from two pools)."""


@dataclass
class Report:
    """What :func:`build_report` wrote: tables, figure paths, and the figures it could not draw."""

    folder: Path
    table1: pd.DataFrame
    table2: pd.DataFrame
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    units: pd.DataFrame = field(default_factory=pd.DataFrame)
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    declaration: Declaration = field(default_factory=Declaration)
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    markdown: Path | None = None
    judge: str = ""  # which judge scored disease fidelity (the evaluate runs' ``fairskin.judge`` tag)


# --------------------------------------------------------------------------- finding runs


def find_runs(tracking_uri: str, filter_string: str) -> pd.DataFrame:
    """All FINISHED runs matching ``filter_string`` in every experiment, as a flat frame
    (columns ``run_id``, ``start_time``, ``tags.*``, ``params.*``, ``metrics.*``)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return pd.DataFrame()
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_ids=ids, filter_string=filter_string, output_format="pandas")
    if len(runs) and "status" in runs:
        runs = runs[runs["status"] == "FINISHED"]
    return runs.reset_index(drop=True)


def _tag(runs: pd.DataFrame, tag: str, default: str = "") -> pd.Series:
    column = f"tags.{tag}"
    return runs[column].fillna(default).astype(str) if column in runs else pd.Series(default, index=runs.index)


def _children(runs: pd.DataFrame) -> pd.DataFrame:
    if not len(runs) or "tags.mlflow.parentRunId" not in runs:
        return runs.iloc[0:0]
    return runs[runs["tags.mlflow.parentRunId"].notna()]


def latest_study(tracking_uri: str, space: str = "ablation") -> str | None:
    """The most recent study of ``space`` that has trial runs, or None."""
    runs = _children(find_runs(tracking_uri, f"tags.`fairskin.space` = '{space}' and tags.`fairskin.kind` = 'tune'"))
    if not len(runs):
        return None
    return str(runs.sort_values("start_time")["tags.fairskin.study"].iloc[-1])


def _with_units(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant``, ``repeat``, ``generator``, ``mode``, ``seed``, ``pool`` columns from tags and params."""
    variant = _tag(runs, TAG_VARIANT)
    repeat = pd.to_numeric(_tag(runs, TAG_REPEAT, "0"), errors="coerce").fillna(0).astype(int)
    seed = pd.to_numeric(runs.get("params.trial.seed", pd.Series(0, index=runs.index)), errors="coerce")
    return runs.assign(
        variant=variant,
        repeat=repeat,
        generator=_tag(runs, "fairskin.generator"),
        mode=_tag(runs, "fairskin.mode"),
        seed=seed,
        pool=_tag(runs, TAG_POOL),
    )


def trial_runs(tracking_uri: str, study: str) -> pd.DataFrame:
    """Trial (child) runs of one study: one row per trial with ``variant``, ``repeat``, ``mode``,
    ``seed`` and ``pool`` (the fingerprint of the pool it drew from)."""
    runs = _children(find_runs(tracking_uri, f"tags.`fairskin.study` = '{study}' and tags.`fairskin.kind` = 'tune'"))
    return _with_units(runs).reset_index(drop=True) if len(runs) else runs


def study_parent(tracking_uri: str, study: str) -> pd.Series | None:
    """The study's parent run (tags: the pipeline run that launched it, the real-shard fingerprint)."""
    runs = find_runs(tracking_uri, f"tags.`fairskin.study` = '{study}' and tags.`fairskin.kind` = 'tune'")
    if not len(runs):
        return None
    parents = runs[runs["tags.mlflow.parentRunId"].isna()] if "tags.mlflow.parentRunId" in runs else runs
    return parents.sort_values("start_time").iloc[-1] if len(parents) else None


def pipeline_stage_keys(tracking_uri: str, pipeline_run: str) -> dict[str, str]:
    """stage name -> stage key, as the pipeline run ``pipeline_run`` recorded them (empty if unknown)."""
    if not pipeline_run:
        return {}
    from mlflow import MlflowClient

    try:
        tags = MlflowClient(tracking_uri=tracking_uri).get_run(pipeline_run).data.tags
    except Exception:  # deleted, or another store
        return {}
    return {k.removeprefix("fairskin.key."): v for k, v in tags.items() if k.startswith("fairskin.key.")}


def evaluate_runs(tracking_uri: str, pools: set[str], stage_key: str | None = None) -> pd.DataFrame:
    """One ``evaluate`` run per pool fingerprint in ``pools``, indexed by fingerprint.

    Where several runs measured one pool, those of the evaluate stage ``stage_key`` (the
    study's own pipeline) are preferred; among equals the latest wins (same pool, same code).
    """
    runs = _children(find_runs(tracking_uri, "tags.`fairskin.stage` = 'evaluate'"))
    if not len(runs) or f"tags.{TAG_POOL}" not in runs:
        return pd.DataFrame()
    runs = _with_units(runs)
    runs = runs[runs["pool"].isin(pools)]
    if stage_key:
        runs = runs.assign(_own=_tag(runs, TAG_STAGE_KEY) == stage_key)
    else:
        runs = runs.assign(_own=False)
    runs = runs.sort_values(["_own", "start_time"])
    return runs.groupby("pool").tail(1).set_index("pool")


def reference_run(tracking_uri: str, real: str | None = None, stage_key: str | None = None) -> pd.Series | None:
    """The real-data-only baseline: the ``reference`` stage run with the given stage key (the
    study's pipeline), else the latest on the same real shards (``real`` fingerprint)."""
    runs = find_runs(tracking_uri, "tags.`fairskin.stage` = 'reference'")
    if not len(runs) or "metrics.test_accuracy" not in runs:
        return None
    runs = runs[runs["metrics.test_accuracy"].notna()].sort_values("start_time")
    if stage_key and len(own := runs[_tag(runs, TAG_STAGE_KEY) == stage_key]):
        return own.iloc[-1]
    if real:
        runs = runs[_tag(runs, TAG_REAL) == real]
    return runs.iloc[-1] if len(runs) else None


def scoped_studies(tracking_uri: str, space: str, pools: set[str]) -> pd.DataFrame:
    """Trial runs of every ``space`` study whose pools are all among ``pools`` (the report's own),
    with a ``study`` column; studies that drew from any other pool are left out."""
    runs = _children(find_runs(tracking_uri, f"tags.`fairskin.space` = '{space}' and tags.`fairskin.kind` = 'tune'"))
    if not len(runs):
        return runs
    runs = _with_units(runs).assign(study=_tag(runs, "fairskin.study"))
    keep = runs.groupby("study")["pool"].transform(lambda p: bool(len(p)) and set(p) <= pools and "" not in set(p))
    return runs[keep.astype(bool)].reset_index(drop=True)


# --------------------------------------------------------------------------- repeats


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
    mixed = trials.groupby(["variant", "repeat"])["pool"].nunique()
    if (mixed > 1).any():
        bad = [f"{v} repeat {r}" for (v, r) in mixed[mixed > 1].index]
        raise ReportError(
            f"the trials of {bad} drew from more than one pool (fingerprints differ); "
            "a row must hold one pool: rerun the study on the current pools"
        )
    rows = []
    for (variant, mode), part in trials.groupby(["variant", "mode"], sort=True):
        values = {c: repeat_values(part, f"metrics.{m}") for c, m, _ in CLASSIFIER_COLUMNS if f"metrics.{m}" in part}
        floor = repeat_values(part, "metrics.test_dp_oracle_floor") if "metrics.test_dp_oracle_floor" in part else None
        groups = [
            c.removeprefix("metrics.")
            for c in part.columns
            if c.startswith("metrics.test_accuracy_") and not c.endswith(("_low", "_high"))
        ]
        for repeat, rpart in part.groupby("repeat", sort=True):
            pool = rpart["pool"].iloc[0]
            row: dict[str, Any] = {
                "variant": variant,
                "mode": mode,
                "repeat": int(repeat),
                "pool": pool,
                "seeds": int(rpart["seed"].nunique()),
                "trials": len(rpart),
            }
            for column, series in values.items():
                row[column] = float(series.get(repeat, math.nan))
            row["dp_oracle_floor"] = float(floor.get(repeat, math.nan)) if floor is not None else math.nan
            for key in groups:
                row[key] = float(pd.to_numeric(rpart[f"metrics.{key}"], errors="coerce").mean())
            ev = evaluated.loc[pool] if pool and len(evaluated) and pool in evaluated.index else None
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


def paired_differences(
    units: pd.DataFrame,
    baseline: str,
    level: float = 0.95,
    declaration: Declaration | None = None,
    verdicts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every variant against ``baseline``, paired by repeat: classifier metrics within each mode
    (block = the mode), generation metrics once per variant (block ``generation``).

    Columns: ``block``, those of :func:`fairskin.metrics.paired.paired_table`, ``primary`` and
    ``verdict``. These are exploratory differences: only the declared primary endpoints (in the
    declaration's mode for classifier endpoints) carry a Holm-adjusted p (``p_holm``, from
    :func:`primary_verdicts`: one family per variant over its primary endpoints), and only their
    ``better`` / ``worse`` verdicts set ``significant`` and ``better`` (+1 / -1). Every other row has
    ``p_holm`` NaN, ``significant`` False, ``better`` 0 and ``verdict`` "exploratory". Empty when
    the baseline has no rows. ``verdicts``: :func:`primary_verdicts` of the same units when the caller
    has them already (computed here otherwise).
    """
    declaration = declaration or Declaration()
    if not len(units) or baseline not in set(units["variant"]):
        return pd.DataFrame()
    blocks = []
    classifier = [(c, d) for c, _, d in CLASSIFIER_COLUMNS if c in units and units[c].notna().any()]
    for mode, part in units.groupby("mode", sort=True):
        if baseline in set(part["variant"]) and part["variant"].nunique() > 1 and classifier:
            table = paired_table(
                part[["variant", "repeat", *[c for c, _ in classifier]]],
                baseline,
                [c for c, _ in classifier],
                dict(classifier),
                level=level,
                resolution={c: declaration.resolution(c) for c, _ in classifier},
            )
            blocks.append(table.assign(block=mode))
    generation = [(c, d) for c, _, d in GENERATION_COLUMNS if c in units and units[c].notna().any()]
    if generation:
        per_generator = units.drop_duplicates(["variant", "repeat"])[["variant", "repeat", *[c for c, _ in generation]]]
        if per_generator["variant"].nunique() > 1:
            table = paired_table(
                per_generator,
                baseline,
                [c for c, _ in generation],
                dict(generation),
                level=level,
                resolution={c: declaration.resolution(c) for c, _ in generation},
            )
            blocks.append(table.assign(block=GENERATION_BLOCK))
    if not blocks:
        return pd.DataFrame()
    out = pd.concat(blocks, ignore_index=True)
    out["family"] = out["variant"]
    own_block = np.where(out["metric"].isin(CLASSIFIER_KEYS), declaration.mode, GENERATION_BLOCK)
    out["primary"] = out["metric"].isin(declaration.primary) & (out["block"] == own_block)
    if verdicts is None:
        verdicts = primary_verdicts(units, baseline, declaration, level)
    lookup = {(r.variant, r.endpoint): r for r in verdicts.itertuples()} if len(verdicts) else {}
    found = [lookup.get((v, m)) if p else None for v, m, p in zip(out["variant"], out["metric"], out["primary"])]
    out["p_holm"] = [r.p_holm if r is not None else np.nan for r in found]
    out["verdict"] = [r.verdict if r is not None else "exploratory" for r in found]
    out["significant"] = out["verdict"].isin(["better", "worse"])
    out["better"] = np.select([out["verdict"] == "better", out["verdict"] == "worse"], [1, -1], 0).astype(int)
    return out[["block", *[c for c in out.columns if c != "block"]]]


def primary_values(units: pd.DataFrame, variant: str, endpoint: str, mode: str) -> pd.Series:
    """repeat -> the value of ``endpoint`` for ``variant``: classifier endpoints from downstream
    ``mode`` (averaged over the repeat's seeds already), generation endpoints once per generator."""
    part = units[units["variant"] == variant]
    if endpoint in CLASSIFIER_KEYS and "mode" in part:
        part = part[part["mode"] == mode]
    if endpoint not in part or not len(part):
        return pd.Series(dtype=float)
    values = pd.to_numeric(part[endpoint], errors="coerce")
    return values.groupby(part["repeat"]).first().dropna()


def primary_verdicts(units: pd.DataFrame, baseline: str, declaration: Declaration, level: float = 0.95) -> pd.DataFrame:
    """The verdict of every declared primary endpoint of every variant against ``baseline``.

    One family per compared variant (controls included, each its own family): its primary
    endpoints, paired by repeat (:func:`fairskin.metrics.verdicts.family_verdicts`: better / worse
    by Holm-adjusted paired t, else equivalent by Holm-adjusted TOST within the declared margin,
    else inconclusive, with the minimum detectable effect; untestable without spread). An endpoint
    this run did not measure (e.g. classifier endpoints without a tune stage) is ``untestable``
    with that reason and does not count in the family's m. Columns: ``variant`` then
    ``VERDICT_COLUMNS``; empty when the baseline has no rows.
    """
    if not len(units) or baseline not in set(units["variant"]):
        return pd.DataFrame(columns=["variant", *VERDICT_COLUMNS])
    frames = []
    for variant in [v for v in dict.fromkeys(units["variant"]) if v != baseline]:
        differences, unmeasured = {}, []
        for endpoint in declaration.primary:
            treated = primary_values(units, variant, endpoint, declaration.mode)
            base = primary_values(units, baseline, endpoint, declaration.mode)
            keys = sorted(set(treated.index) & set(base.index))
            if not keys:
                unmeasured.append(endpoint)
            differences[endpoint] = (treated.loc[keys] - base.loc[keys]).to_numpy(float)
        frame = family_verdicts(
            differences,
            {e: DIRECTIONS_OF[e] for e in declaration.primary},
            declaration.margins,
            {e: declaration.resolution(e) for e in declaration.primary},
            alpha=declaration.alpha,
            power=declaration.power,
            level=level,
        )
        frame.loc[frame["endpoint"].isin(unmeasured), "reason"] = "not measured by this run"
        frames.append(frame.assign(variant=variant))
    if not frames:  # the baseline is the only variant
        return pd.DataFrame(columns=["variant", *VERDICT_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    return out[["variant", *VERDICT_COLUMNS]]


def marks(t1: pd.DataFrame, paired: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """(variant, mode, column) -> ``▲`` / ``▼`` where the Holm-adjusted paired difference against
    the baseline is significant and better / worse; nothing else is marked."""
    out: dict[tuple[str, str, str], str] = {}
    if not len(paired):
        return out
    for _, p in paired[paired["better"] != 0].iterrows():
        symbol = "▲" if p["better"] > 0 else "▼"
        modes = t1.loc[t1["variant"] == p["variant"], "mode"] if p["block"] == GENERATION_BLOCK else [p["block"]]
        for mode in modes:
            out[(p["variant"], mode, p["metric"])] = symbol
    return out


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


# --------------------------------------------------------------------------- markdown


def _fmt(value: float, low: float | None = None, high: float | None = None, mark: str = "") -> str:
    if value is None or not np.isfinite(value):
        return "—"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if low is not None and high is not None and np.isfinite([low, high]).all():
        text += f" [{low:.3f}, {high:.3f}]" if abs(value) < 100 else f" [{low:.1f}, {high:.1f}]"
    return f"{text} {mark}".strip()


def table1_markdown(t1: pd.DataFrame, paired: pd.DataFrame, baseline: str) -> str:
    if not len(t1):
        return "_missing: no trial runs found for this study_\n"
    mark = marks(t1, paired)
    columns = [c for c, _, _ in GENERATION_COLUMNS + CLASSIFIER_COLUMNS]
    head = ["variant", "mode", "R x S"] + [LABELS[c] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in t1.iterrows():
        name = f"{r['variant']} (baseline)" if r["variant"] == baseline else r["variant"]
        cells = [name, r["mode"], f"{r['R']} x {r['S']}"]
        for c in columns:
            text = _fmt(r[c], r[f"{c}_low"], r[f"{c}_high"], mark.get((r["variant"], r["mode"], c), ""))
            if c == "dp":
                text += f" ({_fmt(r['dp_oracle_floor'])})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_markdown(paired: pd.DataFrame, baseline: str, repeats: int, level: float) -> str:
    if not len(paired):
        return f"_no paired differences: the baseline `{baseline}` has no rows, or it is the only variant_\n"
    show_p = repeats >= 3
    head = ["block", "variant", "metric", "n", f"difference [{level:.0%} CI]"]
    head += ["p (t)", "p (Holm)", "p (sign-flip)", "verdict"] if show_p else ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, p in paired.iterrows():
        verdict = p.get("verdict", "exploratory")
        verdict = {"better": "better ▲ (primary)", "worse": "worse ▼ (primary)"}.get(
            verdict, verdict if verdict == "exploratory" else f"{verdict} (primary)"
        )
        cells = [
            p["block"],
            p["variant"],
            LABELS.get(p["metric"], p["metric"]),
            str(int(p["n"])),
            _fmt(p["mean_diff"], p["low"], p["high"]),
        ]
        if show_p:
            cells += [_p(p["p_t"]), _p(p["p_holm"]), _p(p["p_perm"])]
        cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdicts_markdown(verdicts: pd.DataFrame, baseline: str, level: float) -> str:
    """The primary verdicts as a table: one row per (variant, endpoint), with the MDE it could detect."""
    if not len(verdicts):
        return f"\n_no verdicts: the baseline `{baseline}` has no rows, or it is the only variant_\n"
    head = [
        "variant",
        "endpoint",
        "n",
        f"difference [{level:.0%} CI]",
        "p (Holm)",
        "TOST p (Holm)",
        "verdict",
        "MDE (80 % power)",
        "MDE at sd's 80 % upper bound",
        "R for MDE <= margin",
    ]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in verdicts.itertuples():
        reach = "—" if pd.isna(r.repeats_for_margin) else str(int(r.repeats_for_margin))
        verdict = r.verdict + (f" ({r.reason})" if r.reason else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    r.variant,
                    LABELS.get(r.endpoint, r.endpoint),
                    str(int(r.n)),
                    _fmt(r.mean_diff, r.low, r.high),
                    _p(r.p_holm),
                    _p(r.p_tost_holm),
                    verdict,
                    _fmt(r.mde),
                    _fmt(r.mde_sd_upper80),
                    reach,
                ]
            )
            + " |"
        )
    return "\n".join(lines) + (
        "\n\nMDE: the smallest true difference the family's paired t-test (two-sided, "
        "alpha / m, n = R) detects with 80 % power at the measured sd of the differences; "
        "R for MDE <= margin: the repeats that would make the margin detectable.\n"
    )


def _p(value: float) -> str:
    return "—" if not np.isfinite(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def frame_markdown(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    if not len(frame):
        return "_missing: no evaluate runs found for this study's pools_\n"
    head = ["variant", "R", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in frame.iterrows():
        cells = [r["variant"], str(r["R"])] + [_fmt(r[c], r[f"{c}_low"], r[f"{c}_high"]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def _bars(ax, labels: Sequence[str], series: dict[str, tuple[list, list, list]], ylabel: str) -> None:
    """Grouped bars: ``series[name] = (values, lows, highs)`` over ``labels``; NaN intervals drawn without bars."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for k, (name, (values, lows, highs)) in enumerate(series.items()):
        values = np.asarray(values, float)
        err = np.vstack([values - np.asarray(lows, float), np.asarray(highs, float) - values])
        err = np.where(np.isfinite(err), err, 0.0)
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _baseline_row(ref: pd.Series | None, groups: Sequence[str]) -> dict[str, float]:
    if ref is None:
        return {}
    keys = ["accuracy", "essp", "essp_fairseg", "dp"] + [f"accuracy_{g}" for g in groups]
    return {k: float(ref.get(f"metrics.test_{k}", math.nan)) for k in keys}


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_3a(t1: pd.DataFrame, ref: pd.Series | None, path: Path) -> Path | None:
    """Baseline (real data only) vs each variant with fixed proportions (mode ``random``), intervals over R."""
    from fairskin.metrics.plots import _pyplot

    fixed = t1[t1["mode"] == "random"] if len(t1) else t1
    if not len(fixed) or ref is None:
        return None
    plt = _pyplot()
    base = _baseline_row(ref, [])
    labels = ["baseline (real only)"] + [f"{v} (R={r})" for v, r in zip(fixed["variant"], fixed["R"])]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = {}
    for key, name in (("accuracy", "accuracy"), ("essp_fairseg", "ESSP (FairSeg)")):
        series[name] = (
            [base[key]] + fixed[key].tolist(),
            [math.nan] + fixed[f"{key}_low"].tolist(),
            [math.nan] + fixed[f"{key}_high"].tolist(),
        )
    _bars(ax, labels, series, "test figure")
    ax.set_title("Figure 3a: baseline vs variants (fixed proportions); bars: 95% CI over generator repeats", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def figure_4(
    units: pd.DataFrame, ref: pd.Series | None, groups: Sequence[str], path: Path, level: float = 0.95
) -> Path | None:
    """Accuracy per group: baseline and each variant (mode ``random``), mean and interval over repeats."""
    from fairskin.metrics.plots import _pyplot

    fixed = units[units["mode"] == "random"] if len(units) else units
    keys = [f"test_accuracy_{g}" for g in groups]
    if not len(fixed) or not all(k in fixed for k in keys):
        return None
    plt = _pyplot()
    series: dict[str, tuple[list, list, list]] = {}
    if ref is not None:
        base = _baseline_row(ref, groups)
        series["baseline (real only)"] = (
            [base[f"accuracy_{g}"] for g in groups],
            [math.nan] * len(groups),
            [math.nan] * len(groups),
        )
    for variant, part in fixed.groupby("variant"):
        ivs = [t_interval(part[k].to_numpy(float), level) for k in keys]
        series[f"{variant} (R={part['repeat'].nunique()})"] = (
            [i.mean for i in ivs],
            [i.low for i in ivs],
            [i.high for i in ivs],
        )
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    _bars(ax, list(groups), series, "test accuracy")
    ax.set_title("Figure 4: accuracy per group", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def figure_6(t1: pd.DataFrame, path: Path) -> Path | None:
    """Fixed (random) vs resample vs reweight, per variant: accuracy and ESSP (FairSeg)."""
    from fairskin.metrics.plots import _pyplot

    if not len(t1) or t1["mode"].nunique() < 2:
        return None
    plt = _pyplot()
    variants = sorted(t1["variant"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, name) in zip(axes, (("accuracy", "accuracy"), ("essp_fairseg", "ESSP (FairSeg)"))):
        series = {}
        for mode in [m for m in MODES if m in set(t1["mode"])]:
            part = t1[t1["mode"] == mode].set_index("variant").reindex(variants)
            series[mode] = (part[key].tolist(), part[f"{key}_low"].tolist(), part[f"{key}_high"].tolist())
        _bars(ax, variants, series, f"test {name}")
    fig.suptitle("Figure 6: fixed proportions vs resample vs reweight (95% CI over generator repeats)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def figure_3b(runs: pd.DataFrame, path: Path) -> Path | None:
    """Augmentation-count sweep (``aug_count`` studies): test accuracy and ESSP vs count per subclass.

    Each study's trials are drawn as points (one classifier seed each); a TPE study may hold
    several trials at one count, all drawn."""
    from fairskin.metrics.plots import _pyplot

    column = "params.trial.per_subclass"
    if not len(runs) or column not in runs or "metrics.test_accuracy" not in runs:
        return None
    runs = runs.assign(count=pd.to_numeric(runs[column], errors="coerce")).dropna(subset=["count"])
    if not len(runs):
        return None
    data = pd.DataFrame(
        {
            "study": runs["study"],
            "variant": runs["variant"],
            "count": runs["count"],
            "test_accuracy": runs["metrics.test_accuracy"],
            "test_essp_fairseg": runs.get("metrics.test_essp_fairseg", math.nan),
        }
    )
    data.sort_values(["study", "count"]).to_csv(path.with_suffix(".csv"), index=False)  # what is plotted
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (study, variant), part in runs.groupby(["study", "variant"]):
        part = part.sort_values("count")
        label = f"{variant} [{study}]"
        ax.plot(part["count"], part["metrics.test_accuracy"], "o", label=f"{label} accuracy")
        if "metrics.test_essp_fairseg" in part:
            ax.plot(part["count"], part["metrics.test_essp_fairseg"], "s", mfc="none", label=f"{label} ESSP (FairSeg)")
        means = part.groupby("count")["metrics.test_accuracy"].mean()
        ax.plot(means.index, means.to_numpy(), "-", alpha=0.5)
    ax.set_xlabel("synthetic images per subclass (preset units)")
    ax.set_ylabel("test figure (one classifier seed per point)")
    ax.legend(fontsize=6)
    ax.set_title("Figure 3b: augmentation count", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def figure_5(runs: pd.DataFrame, groups: Sequence[str], path: Path) -> Path | None:
    """Proportion search (``ethnic_ratio`` studies): test ESSP (FairSeg) against each group's share."""
    from fairskin.metrics.plots import _pyplot

    share_cols = {g: f"params.trial.proportions.{g}" for g in groups}
    if not len(runs) or any(c not in runs for c in share_cols.values()) or "metrics.test_essp_fairseg" not in runs:
        return None
    data = pd.DataFrame(
        {
            "study": runs["study"],
            "variant": runs["variant"],
            **{g: pd.to_numeric(runs[c], errors="coerce") for g, c in share_cols.items()},
            "test_essp_fairseg": runs["metrics.test_essp_fairseg"],
            "test_accuracy": runs.get("metrics.test_accuracy", math.nan),
        }
    )
    data.to_csv(path.with_suffix(".csv"), index=False)  # what is plotted
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), sharey=True)
    points = None
    for ax, g in zip(np.atleast_1d(axes), groups):
        share = pd.to_numeric(runs[share_cols[g]], errors="coerce")
        points = ax.scatter(share, runs["metrics.test_essp_fairseg"], c=runs["metrics.test_accuracy"], cmap="viridis")
        ax.set_xlabel(f"share of synthetic images: {g}")
    np.atleast_1d(axes)[0].set_ylabel("test ESSP (FairSeg)")
    fig.colorbar(points, ax=list(np.atleast_1d(axes)), label="test accuracy")
    fig.suptitle(
        f"Figure 5: group proportions of the synthetic images ({runs['study'].nunique()} study(ies), "
        f"{len(runs)} trials)",
        fontsize=9,
    )
    return _save(fig, path, plt)


# --------------------------------------------------------------------------- the whole report


def build_report(
    tracking_uri: str,
    out: Path,
    groups: Sequence[str],
    study: str | None = None,
    seeds: int | None = None,
    baseline: str = "vanilla",
    level: float = 0.95,
    declaration: Declaration | None = None,
) -> Report:
    """Rebuild Table 1, the paired differences, Table 2 and Figures 3a-6 from MLflow into ``out``.

    ``study``: the ablation study whose trials fill Table 1 (default: the latest ``ablation``
    study); ``seeds``: use at most the first N classifier seeds of each repeat; ``baseline``:
    the variant every other is paired against; ``level``: interval coverage; ``declaration``: the
    primary endpoints, margins and alpha (:class:`fairskin.metrics.endpoints.Declaration`, default
    the built-in one): one Holm family per compared variant over them, everything else exploratory.
    Writes ``verdicts.csv`` and ``declaration.json`` beside the tables.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = study or latest_study(tracking_uri)
    trials = trial_runs(tracking_uri, study) if study else pd.DataFrame()
    parent = study_parent(tracking_uri, study) if study else None
    pipeline_run = str(parent.get("tags.fairskin.pipeline_run", "") or "") if parent is not None else ""
    keys = pipeline_stage_keys(tracking_uri, pipeline_run)
    real = str(parent.get(f"tags.{TAG_REAL}", "") or "") if parent is not None else ""
    pools = set(trials["pool"]) - {""} if len(trials) else set()
    evaluated = evaluate_runs(tracking_uri, pools, keys.get("evaluate"))
    ref = reference_run(tracking_uri, real, keys.get("reference"))
    units = unit_frame(trials, evaluated, seeds)
    t1 = table1(units, level)
    declaration = declaration or Declaration()
    verdicts = primary_verdicts(units, baseline, declaration, level)
    paired = paired_differences(units, baseline, level, declaration, verdicts)
    t2 = table2(units, groups, level)
    for frame, name in (
        (t1, "table1.csv"),
        (paired, f"delta_vs_{baseline}.csv"),
        (t2, "table2_fid_per_group.csv"),
        (units, "repeats.csv"),
        (verdicts, "verdicts.csv"),
        (difference_components(trials, units, baseline, declaration, level), "variance_components.csv"),
    ):
        frame.to_csv(out / name, index=False)
    atomic_write_text(out / "declaration.json", json.dumps(declaration.as_dict(), indent=2))
    report = Report(out, t1, t2, paired, units, verdicts=verdicts, declaration=declaration)
    if len(evaluated):
        report.judge = "; ".join(sorted(set(_tag(evaluated, "fairskin.judge")) - {""}))
    if len(units):
        report.fingerprints = {
            f"{r.variant} repeat {r.repeat}": r.pool for r in units.drop_duplicates(["variant", "repeat"]).itertuples()
        }
        missing_eval = sorted({f"{r.variant} repeat {r.repeat}" for r in units.itertuples() if not np.isfinite(r.fid)})
        if missing_eval:
            report.notes.append(
                f"no evaluate run measured the pool of {missing_eval}: their generation columns are empty"
            )
    if real:
        report.fingerprints["real shards"] = real
    if len(units) and "skin_tone_agreement_above_ceiling" in units:
        above = sorted(
            {
                f"{r.variant} repeat {r.repeat}"
                for r in units.itertuples()
                if getattr(r, "skin_tone_agreement_above_ceiling", 0) == 1
            }
        )
        if above:
            report.notes.append(
                f"skin-tone agreement above its held-out real ceiling in {above}: a pool narrower "
                "in tone than real data scores so; read the W1 ratio, not the agreement"
            )
    aug, ratio = scoped_studies(tracking_uri, "aug_count", pools), scoped_studies(tracking_uri, "ethnic_ratio", pools)
    drawers = {
        "figure3a_baseline_vs_variants": lambda p: figure_3a(t1, ref, p),
        "figure3b_augmentation_count": lambda p: figure_3b(aug, p),
        "figure4_group_accuracy": lambda p: figure_4(units, ref, groups, p, level),
        "figure5_proportion_search": lambda p: figure_5(ratio, groups, p),
        "figure6_downstream_modes": lambda p: figure_6(t1, p),
    }
    why = {
        "figure3a_baseline_vs_variants": "needs the pipeline's reference run and trials with mode 'random'",
        "figure3b_augmentation_count": "no finished trials of an `aug_count` study on this report's pools "
        "(python -m fairskin.tune --space aug_count, same preset and runs root)",
        "figure4_group_accuracy": "needs trials with mode 'random'",
        "figure5_proportion_search": "no finished trials of an `ethnic_ratio` study on this report's pools "
        "(python -m fairskin.tune --space ethnic_ratio, same preset and runs root)",
        "figure6_downstream_modes": "needs trials of at least two downstream modes",
    }
    for name, draw in drawers.items():
        path = draw(out / f"{name}.png")
        if path is None:
            report.missing[name] = why[name]
        else:
            report.figures[name] = path
    studies = {
        "aug_count": sorted(set(aug["study"])) if len(aug) else [],
        "ethnic_ratio": sorted(set(ratio["study"])) if len(ratio) else [],
    }
    report.markdown = out / "report.md"
    atomic_write_text(report.markdown, _markdown(report, study, pipeline_run, ref, groups, baseline, level, studies))
    return report


def difference_components(
    trials: pd.DataFrame, units: pd.DataFrame, baseline: str, declaration: Declaration, level: float = 0.95
) -> pd.DataFrame:
    """Variance components of each variant's paired difference on each primary endpoint
    (:func:`fairskin.metrics.components.variance_components`, moments and MLS intervals).

    Classifier endpoints: one difference per (repeat, pool, classifier seed), the trials of the
    declared mode paired with the baseline's of the same repeat and seed; generation endpoints: one
    per (repeat, pool). Today every generator has one pool (K = 1), so the fine-tune component
    holds the pool's too (the ``notes`` say so), and S = 1 merges the classifier's likewise.
    Columns: ``variant``, ``endpoint`` and those of ``Components.as_row()``; a family the data
    cannot estimate (fewer than 2 paired repeats) is left out.
    """
    from fairskin.metrics.components import variance_components

    metric_of = {c: m for c, m, _ in CLASSIFIER_COLUMNS}
    rows = []
    for variant in [v for v in dict.fromkeys(units["variant"]) if v != baseline] if len(units) else []:
        for endpoint in declaration.primary:
            if endpoint in CLASSIFIER_KEYS:
                column = f"metrics.{metric_of[endpoint]}"
                if not len(trials) or column not in trials:
                    continue
                part = trials[trials["mode"] == declaration.mode]
                frame = {
                    v: part[part["variant"] == v].groupby(["repeat", "seed"])[column].mean()
                    for v in (variant, baseline)
                }
                d = (frame[variant] - frame[baseline]).dropna().rename("d").reset_index().assign(pool=0)
                seed = "seed"
            else:
                a, b = primary_values(units, variant, endpoint, ""), primary_values(units, baseline, endpoint, "")
                d = (a - b).dropna().rename("d").rename_axis("repeat").reset_index().assign(pool=0)
                seed = None
            if d["repeat"].nunique() < 2:
                continue
            try:
                comp = variance_components(d, "d", "repeat", "pool", seed, method="moments", level=level)
            except ValueError:  # unbalanced seeds (a failed trial): no moments, and the planner needs balance
                continue
            rows.append({"variant": variant, "endpoint": endpoint, **comp.as_row()})
    return pd.DataFrame(rows)


def _markdown(
    report: Report,
    study: str | None,
    pipeline_run: str,
    ref: pd.Series | None,
    groups: Sequence[str],
    baseline: str,
    level: float,
    studies: dict[str, list[str]],
) -> str:
    t1 = report.table1
    repeats = int(t1["R"].min()) if len(t1) else 0
    lines = [
        "# FairSkin ablation report",
        "",
        f"Study: `{study or 'none found'}`"
        + (f", made by pipeline run `{pipeline_run}`" if pipeline_run else "")
        + ". Rebuilt from MLflow runs joined by their provenance tags (pool, real-shard and stage fingerprints).",
        "",
    ]
    if repeats == 1:
        lines += [
            "**1 repeat: no interval.** Each variant has one fine-tune and one pool (R = 1), so nothing below "
            "measures generator variance and no difference between variants is claimed. Set "
            "`diffusion.repeat_seeds` to R >= 3 seeds (the `paper` preset has 3) for intervals and tests.",
            "",
        ]
    elif repeats == 2:
        lines += [
            "**R = 2: intervals only.** With two generator repeats the paired differences show their "
            "intervals but no p-value; no difference is called significant.",
            "",
        ]
    decl = report.declaration
    lines += [
        f"How to read it: each cell is the mean over R generator repeats (the S classifier seeds of a repeat "
        f"averaged first), with its {level:.0%} t-interval over the R repeat values. `▲` / `▼` mark a "
        f"declared primary endpoint whose verdict against `{baseline}` is better / worse (Holm over the "
        f"variant's primary endpoints, family-wise alpha {decl.alpha}); every other cell is exploratory and "
        "never marked. DP is not ranked (a constant classifier has DP = 0); its oracle floor, what a perfect "
        "classifier scores, is in brackets.",
        "",
    ]
    lines += [
        "## Primary endpoints and verdicts",
        "",
        "Declared in the configuration before any data (`report.primary`, `report.margins`, `report.resolutions`):",
        "",
        decl.markdown(),
        verdicts_markdown(report.verdicts, baseline, level),
    ]
    if ref is not None:
        base = _baseline_row(ref, groups)
        lines += [
            f"Baseline (real data only, reference classifier, one seed): accuracy {_fmt(base['accuracy'])}, "
            f"DP {_fmt(base['dp'])}, ESSP (FairSeg) {_fmt(base['essp_fairseg'])}.",
            "",
        ]
    lines += [
        "## Table 1: variants x downstream modes (test split)",
        "",
        table1_markdown(t1, report.paired, baseline),
        "FID / KID / IS are computed in the feature space named by the evaluate runs "
        "(`fairskin.feature_extractor` tag); FID variance is the sample variance (ddof=1). Disease fidelity: "
        "the judge's accuracy on generated images / on held-out real images; "
        f"{report.judge or 'judge not recorded'}. KID floor: held-out real vs the real reference at the same N "
        "(what a perfect generator scores); floor-corrected FID variance subtracts each subclass's FID floor.",
        "",
        f"## Paired differences: `delta_vs_{baseline}`",
        "",
        f"Within-repeat differences (variant - {baseline}), paired by generator repeat; classifier metrics "
        "within each downstream mode, generation metrics once per variant. Exploratory: an interval, with "
        "the unadjusted paired t p and the sign-flip p (R >= 6) for orientation, never a verdict; only the "
        "primary endpoints above carry one (their rows say so). A difference with no spread above the "
        "metric's resolution has no p (a tie, not a precise effect).",
        "",
        paired_markdown(report.paired, baseline, repeats, level),
        "## Table 2: FID per group",
        "",
        "Columns named by a group: the mean of the group's subclass FIDs weighted by their real counts; "
        "`pooled`: the group's (or every) generated image pooled over diseases, the pool subsampled (seeded) to "
        "the real disease (subclass) mix, against all the group's (every) real image. Feature space and judge "
        f"as in Table 1 ({report.judge or 'judge not recorded'}).",
        "",
        frame_markdown(report.table2, [c for c in table2_columns(groups) if c in report.table2]),
        "## What this report does not claim",
        "",
        "- It compares the variants as run: one base model, these seeds, this data. Generator variance is "
        "measured only over the R repeats listed; R = 1 measures none.",
        "- Test figures never steered a search; studies chose on validation figures only.",
        "- No absence of an effect: where a primary endpoint is `inconclusive`, the experiment could only have "
        "detected the MDE shown beside it (80 % power); `equivalent` means inside the declared margin by "
        "TOST, nothing stronger. Exploratory differences decide nothing.",
        "",
        "## Provenance",
        "",
    ]
    lines += [f"- {name}: `{fp}`" for name, fp in report.fingerprints.items()] or ["- no fingerprints found"]
    for space, names in studies.items():
        lines.append(f"- `{space}` studies on these pools: {', '.join(f'`{n}`' for n in names) or 'none'}")
    lines += [f"- note: {n}" for n in report.notes]
    lines += ["", "## Figures", ""]
    for name, path in report.figures.items():
        lines += [f"### {name}", "", f"![{name}]({path.name})", ""]
    for name, reason in report.missing.items():
        lines += [f"### {name}", "", f"_missing: {reason}_", ""]
    return "\n".join(lines)
