"""The ablation report: the paper's tables and figures rebuilt from MLflow alone.

Runs are found by their tags, never by folder: classifier trials by ``fairskin.study`` (and
``fairskin.space``), generation figures by ``fairskin.stage = evaluate`` and
``fairskin.variant``, the real-data-only baseline by ``fairskin.stage = reference``.

* **Table 1** — variant x downstream mode: FID, FID variance (subclasses, groups), KID, IS
  (from the variant's evaluate run), accuracy, DP beside its oracle floor, ESSP (paper) and
  ESSP (FairSeg) (from the study's trials, test split).
* **Table 2** — FID per group per variant.
* **Figures** — 3a baseline vs variants, 3b augmentation-count sweep, 4 accuracy per group,
  5 proportion search, 6 fixed vs resample vs reweight. A figure with no runs behind it is
  listed as missing, never drawn from made-up numbers.

Intervals: with several training seeds per row, the 95 % t-interval over seeds (``seeds``
column says how many); with one, the bootstrap interval over test samples logged by the
trial. In each column the best row is marked ``**``, and rows whose interval overlaps the
best row's interval are marked ``≈`` (the difference is inside the intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fairskin.io import atomic_write_text

# (column, MLflow metric, direction): direction +1 = higher is better, -1 = lower is better.
CLASSIFIER_COLUMNS = (
    ("accuracy", "test_accuracy", +1),
    ("dp", "test_dp", -1),
    ("essp", "test_essp", +1),
    ("essp_fairseg", "test_essp_fairseg", +1),
)
GENERATION_COLUMNS = (
    ("fid", "fid_mean", -1),
    ("fid_var_subclass", "fid_var_subclass", -1),
    ("fid_var_group", "fid_var_group", -1),
    ("kid", "kid_mean", -1),
    ("is", "is_mean", +1),
)
MODES = ("random", "resample", "reweight")


@dataclass
class Report:
    """What :func:`build_report` wrote: tables, figure paths, and the figures it could not draw."""

    folder: Path
    table1: pd.DataFrame
    table2: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    markdown: Path | None = None


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


def latest_study(tracking_uri: str, space: str = "ablation") -> str | None:
    """The most recent study of ``space`` that has trial runs, or None."""
    runs = find_runs(tracking_uri, f"tags.`fairskin.space` = '{space}' and tags.`fairskin.kind` = 'tune'")
    runs = runs[runs.get("tags.mlflow.parentRunId", pd.Series(dtype=str)).notna()] if len(runs) else runs
    if not len(runs):
        return None
    return str(runs.sort_values("start_time")["tags.fairskin.study"].iloc[-1])


def trial_runs(tracking_uri: str, study: str) -> pd.DataFrame:
    """Trial (child) runs of one study: one row per trial with ``variant``, ``mode``, ``seed``."""
    runs = find_runs(tracking_uri, f"tags.`fairskin.study` = '{study}'")
    if not len(runs):
        return runs
    runs = runs[runs["tags.mlflow.parentRunId"].notna()] if "tags.mlflow.parentRunId" in runs else runs.iloc[0:0]
    runs = runs.assign(variant=runs["tags.fairskin.variant"], mode=runs["tags.fairskin.mode"],
                       seed=pd.to_numeric(runs.get("params.trial.seed", pd.Series(0, index=runs.index)),
                                          errors="coerce"))
    return runs.reset_index(drop=True)


def evaluate_runs(tracking_uri: str) -> pd.DataFrame:
    """The latest evaluate run per variant (``fairskin.stage = evaluate``)."""
    runs = find_runs(tracking_uri, "tags.`fairskin.stage` = 'evaluate'")
    if not len(runs) or "tags.fairskin.variant" not in runs:
        return pd.DataFrame()
    runs = runs[runs["tags.fairskin.variant"].notna()].sort_values("start_time")
    return runs.groupby("tags.fairskin.variant").tail(1).set_index("tags.fairskin.variant")


def reference_run(tracking_uri: str) -> pd.Series | None:
    """The latest real-data-only baseline (the ``reference`` stage run that trained, not skipped)."""
    runs = find_runs(tracking_uri, "tags.`fairskin.stage` = 'reference'")
    if not len(runs) or "metrics.test_accuracy" not in runs:
        return None
    runs = runs[runs["metrics.test_accuracy"].notna()].sort_values("start_time")
    return runs.iloc[-1] if len(runs) else None


# --------------------------------------------------------------------------- intervals


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % t-interval of the mean over training seeds (n >= 2)."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], float)
    mean = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _interval(rows: pd.DataFrame, metric: str) -> tuple[float, float, float]:
    values = rows.get(f"metrics.{metric}", pd.Series(dtype=float)).astype(float)
    if len(values.dropna()) >= 2:
        return seed_interval(values)
    low = rows.get(f"metrics.{metric}_ci_low", pd.Series([math.nan])).astype(float).mean()
    high = rows.get(f"metrics.{metric}_ci_high", pd.Series([math.nan])).astype(float).mean()
    return float(values.mean()) if len(values) else math.nan, float(low), float(high)


def mark_best(table: pd.DataFrame, column: str, direction: int) -> pd.Series:
    """Per row: ``"**"`` for the best, ``"≈"`` where the interval overlaps the best's, else ``""``."""
    values = table[column].astype(float)
    if values.notna().sum() == 0:
        return pd.Series("", index=table.index)
    best = values.idxmax() if direction > 0 else values.idxmin()
    lo, hi = table.get(f"{column}_low"), table.get(f"{column}_high")
    marks = pd.Series("", index=table.index)
    marks[best] = "**"
    if lo is None or hi is None or not np.isfinite([lo[best], hi[best]]).all():
        return marks
    for i in table.index:
        if i != best and np.isfinite([lo[i], hi[i]]).all() and lo[i] <= hi[best] and lo[best] <= hi[i]:
            marks[i] = "≈"
    return marks


# --------------------------------------------------------------------------- tables


def table1(trials: pd.DataFrame, evaluated: pd.DataFrame, seeds: int | None = None) -> pd.DataFrame:
    """Variant x mode rows: generation figures of the variant and classifier figures (mean, low, high)."""
    rows = []
    if not len(trials):
        return pd.DataFrame()
    if seeds is not None:
        trials = trials[trials["seed"].isin(sorted(trials["seed"].dropna().unique())[:seeds])]
    for (variant, mode), part in trials.groupby(["variant", "mode"], sort=True):
        row: dict[str, Any] = {"variant": variant, "mode": mode, "seeds": int(part["seed"].nunique()),
                               "trials": len(part)}
        for column, metric, _ in CLASSIFIER_COLUMNS:
            row[column], row[f"{column}_low"], row[f"{column}_high"] = _interval(part, metric)
        row["dp_oracle_floor"] = float(part.get("metrics.test_dp_oracle_floor", pd.Series([math.nan])).mean())
        for column, metric, _ in GENERATION_COLUMNS:
            key = f"metrics.{metric}"
            row[column] = float(evaluated.loc[variant, key]) if variant in evaluated.index and key in evaluated else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def table2(evaluated: pd.DataFrame, groups: Sequence[str]) -> pd.DataFrame:
    """FID per group (rows: variants), from the evaluate runs."""
    if not len(evaluated):
        return pd.DataFrame()
    data = {g: evaluated.get(f"metrics.fid_{g}", pd.Series(math.nan, index=evaluated.index)) for g in groups}
    return pd.DataFrame(data, index=evaluated.index).rename_axis("variant").reset_index()


def _fmt(value: float, low: float | None = None, high: float | None = None, mark: str = "") -> str:
    if value is None or not np.isfinite(value):
        return "—"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if low is not None and high is not None and np.isfinite([low, high]).all():
        text += f" [{low:.3f}, {high:.3f}]"
    return f"{mark}{text}{mark}" if mark == "**" else f"{text} {mark}".strip()


def table1_markdown(t1: pd.DataFrame) -> str:
    if not len(t1):
        return "_missing: no trial runs found for this study_\n"
    marks = {c: mark_best(t1, c, d) for c, _, d in CLASSIFIER_COLUMNS + GENERATION_COLUMNS}
    head = ["variant", "mode", "seeds", "FID", "FID var (subclass)", "FID var (group)", "KID", "IS",
            "accuracy", "DP (oracle floor)", "ESSP (paper)", "ESSP (FairSeg)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in t1.iterrows():
        cells = [r["variant"], r["mode"], str(r["seeds"])]
        cells += [_fmt(r[c], mark=marks[c][i]) for c, _, _ in GENERATION_COLUMNS]
        cells.append(_fmt(r["accuracy"], r["accuracy_low"], r["accuracy_high"], marks["accuracy"][i]))
        cells.append(_fmt(r["dp"], r["dp_low"], r["dp_high"], marks["dp"][i]) + f" ({_fmt(r['dp_oracle_floor'])})")
        cells.append(_fmt(r["essp"], r["essp_low"], r["essp_high"], marks["essp"][i]))
        cells.append(_fmt(r["essp_fairseg"], r["essp_fairseg_low"], r["essp_fairseg_high"], marks["essp_fairseg"][i]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frame_markdown(frame: pd.DataFrame) -> str:
    if not len(frame):
        return "_missing: no evaluate runs found_\n"
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(v if isinstance(v, str) else _fmt(float(v)) for v in r) + " |")
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


def figure_3a(t1: pd.DataFrame, ref: pd.Series | None, path: Path) -> Path | None:
    """Baseline (real data only) vs each variant with fixed proportions (mode ``random``)."""
    from fairskin.metrics.plots import _pyplot

    fixed = t1[t1["mode"] == "random"] if len(t1) else t1
    if not len(fixed) or ref is None:
        return None
    plt = _pyplot()
    base = _baseline_row(ref, [])
    labels = ["baseline (real only)"] + fixed["variant"].tolist()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = {}
    for key, name in (("accuracy", "accuracy"), ("essp_fairseg", "ESSP (FairSeg)")):
        series[name] = ([base[key]] + fixed[key].tolist(), [math.nan] + fixed[f"{key}_low"].tolist(),
                        [math.nan] + fixed[f"{key}_high"].tolist())
    _bars(ax, labels, series, "test figure")
    ax.set_title("Figure 3a: baseline vs variants (fixed proportions)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_4(trials: pd.DataFrame, ref: pd.Series | None, groups: Sequence[str], path: Path) -> Path | None:
    """Accuracy per group: baseline and each variant (mode ``random``), mean over seeds."""
    from fairskin.metrics.plots import _pyplot

    fixed = trials[trials["mode"] == "random"] if len(trials) else trials
    if not len(fixed):
        return None
    plt = _pyplot()
    series: dict[str, tuple[list, list, list]] = {}
    if ref is not None:
        base = _baseline_row(ref, groups)
        series["baseline (real only)"] = ([base[f"accuracy_{g}"] for g in groups], [math.nan] * len(groups),
                                          [math.nan] * len(groups))
    for variant, part in fixed.groupby("variant"):
        stats = [_interval(part, f"test_accuracy_{g}") for g in groups]
        series[str(variant)] = ([s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    _bars(ax, list(groups), series, "test accuracy")
    ax.set_title("Figure 4: accuracy per group", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.suptitle("Figure 6: fixed proportions vs resample vs reweight", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_3b(tracking_uri: str, path: Path) -> Path | None:
    """Augmentation-count sweep (``aug_count`` studies): test accuracy and ESSP vs count per subclass."""
    from fairskin.metrics.plots import _pyplot

    runs = find_runs(tracking_uri, "tags.`fairskin.space` = 'aug_count'")
    column = next((c for c in runs.columns if c.startswith("params.trial.") and "count" in c), None) if len(runs) else None
    if column is None or "tags.mlflow.parentRunId" not in runs:
        return None
    runs = runs[runs["tags.mlflow.parentRunId"].notna()]
    runs = runs.assign(count=pd.to_numeric(runs[column], errors="coerce")).dropna(subset=["count"])
    if not len(runs):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for variant, part in runs.groupby("tags.fairskin.variant"):
        part = part.sort_values("count")
        ax.plot(part["count"], part["metrics.test_accuracy"], "o-", label=f"{variant} accuracy")
        if "metrics.test_essp_fairseg" in part:
            ax.plot(part["count"], part["metrics.test_essp_fairseg"], "s--", label=f"{variant} ESSP (FairSeg)")
    ax.set_xlabel("synthetic images per subclass (preset units)")
    ax.set_ylabel("test figure")
    ax.legend(fontsize=7)
    ax.set_title("Figure 3b: augmentation count", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_5(tracking_uri: str, groups: Sequence[str], path: Path) -> Path | None:
    """Proportion search (``ethnic_ratio`` studies): test ESSP (FairSeg) against each group's share."""
    from fairskin.metrics.plots import _pyplot

    runs = find_runs(tracking_uri, "tags.`fairskin.space` = 'ethnic_ratio'")
    if not len(runs) or "tags.mlflow.parentRunId" not in runs:
        return None
    runs = runs[runs["tags.mlflow.parentRunId"].notna()]
    share_cols = {g: next((c for c in runs.columns if c.startswith("params.trial.") and c.endswith(g)), None)
                  for g in groups}
    if not len(runs) or any(c is None for c in share_cols.values()) or "metrics.test_essp_fairseg" not in runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), sharey=True)
    for ax, g in zip(np.atleast_1d(axes), groups):
        share = pd.to_numeric(runs[share_cols[g]], errors="coerce")
        points = ax.scatter(share, runs["metrics.test_essp_fairseg"], c=runs["metrics.test_accuracy"], cmap="viridis")
        ax.set_xlabel(f"share of synthetic images: {g}")
    np.atleast_1d(axes)[0].set_ylabel("test ESSP (FairSeg)")
    fig.colorbar(points, ax=list(np.atleast_1d(axes)), label="test accuracy")
    fig.suptitle("Figure 5: group proportions of the synthetic images", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the whole report


def build_report(tracking_uri: str, out: Path, groups: Sequence[str], study: str | None = None,
                 seeds: int | None = None) -> Report:
    """Rebuild Table 1, Table 2 and Figures 3a-6 from MLflow into ``out`` (markdown + CSV + PNG).

    ``study``: the ablation study whose trials fill Table 1 (default: the latest ``ablation``
    study); ``seeds``: use at most the first N training seeds of each row.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = study or latest_study(tracking_uri)
    trials = trial_runs(tracking_uri, study) if study else pd.DataFrame()
    evaluated = evaluate_runs(tracking_uri)
    ref = reference_run(tracking_uri)
    t1, t2 = table1(trials, evaluated, seeds), table2(evaluated, groups)
    t1.to_csv(out / "table1.csv", index=False)
    t2.to_csv(out / "table2_fid_per_group.csv", index=False)
    report = Report(out, t1, t2)
    drawers = {
        "figure3a_baseline_vs_variants": lambda p: figure_3a(t1, ref, p),
        "figure3b_augmentation_count": lambda p: figure_3b(tracking_uri, p),
        "figure4_group_accuracy": lambda p: figure_4(trials, ref, groups, p),
        "figure5_proportion_search": lambda p: figure_5(tracking_uri, groups, p),
        "figure6_downstream_modes": lambda p: figure_6(t1, p),
    }
    why = {"figure3a_baseline_vs_variants": "needs the reference run and trials with mode 'random'",
           "figure3b_augmentation_count": "no finished trials of an `aug_count` study "
                                          "(python -m fairskin.tune --space aug_count)",
           "figure4_group_accuracy": "needs trials with mode 'random'",
           "figure5_proportion_search": "no finished trials of an `ethnic_ratio` study "
                                       "(python -m fairskin.tune --space ethnic_ratio)",
           "figure6_downstream_modes": "needs trials of at least two downstream modes"}
    for name, draw in drawers.items():
        path = draw(out / f"{name}.png")
        if path is None:
            report.missing[name] = why[name]
        else:
            report.figures[name] = path
    report.markdown = out / "report.md"
    atomic_write_text(report.markdown, _markdown(report, study, ref, groups))
    return report


def _markdown(report: Report, study: str | None, ref: pd.Series | None, groups: Sequence[str]) -> str:
    lines = ["# FairSkin ablation report", "",
             f"Study: `{study or 'none found'}`. Rebuilt from MLflow runs found by their `fairskin.*` tags.",
             "Intervals: 95 % t-interval over training seeds where a row has several seeds, else the bootstrap "
             "interval over test samples. `**` marks the best value of a column; `≈` marks a value whose "
             "interval overlaps the best's (the difference is inside the intervals).", ""]
    if ref is not None:
        base = _baseline_row(ref, groups)
        lines += [f"Baseline (real data only, reference classifier): accuracy {_fmt(base['accuracy'])}, "
                  f"DP {_fmt(base['dp'])}, ESSP (FairSeg) {_fmt(base['essp_fairseg'])}.", ""]
    lines += ["## Table 1: variants x downstream modes (test split)", "", table1_markdown(report.table1),
              "FID / KID / IS are computed in the feature space named by the evaluate runs "
              "(`fairskin.feature_extractor` tag); FID variance is the sample variance (ddof=1).", "",
              "## Table 2: FID per group", "", frame_markdown(report.table2), "## Figures", ""]
    for name, path in report.figures.items():
        lines += [f"### {name}", "", f"![{name}]({path.name})", ""]
    for name, reason in report.missing.items():
        lines += [f"### {name}", "", f"_missing: {reason}_", ""]
    return "\n".join(lines)
