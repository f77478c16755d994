"""Figures 3a-6 of the report (matplotlib, Agg), and which of them the runs at hand can draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fairskin.metrics.endpoints import MODES
from fairskin.metrics.paired import t_interval
from fairskin.report.runs import baseline_row

# Why a figure is missing, by the file name (without .png) it would have had.
MISSING_REASONS = {
    "figure3a_baseline_vs_variants": "needs the pipeline's reference run and trials with mode 'random'",
    "figure3b_augmentation_count": "no finished trials of an `aug_count` study on this report's pools "
    "(python -m fairskin.tune --space aug_count, same preset and runs root)",
    "figure4_group_accuracy": "needs trials with mode 'random'",
    "figure5_proportion_search": "no finished trials of an `ethnic_ratio` study on this report's pools "
    "(python -m fairskin.tune --space ethnic_ratio, same preset and runs root)",
    "figure6_downstream_modes": "needs trials of at least two downstream modes",
}


def draw_figures(
    out: Path,
    t1: pd.DataFrame,
    units: pd.DataFrame,
    ref: pd.Series | None,
    aug: pd.DataFrame,
    ratio: pd.DataFrame,
    groups: Sequence[str],
    level: float = 0.95,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every figure the runs allow into ``out`` (``<name>.png``, and the plotted data as ``<name>.csv``
    for 3b and 5): returns (name -> path of the figures drawn, name -> why for those that could not be)."""
    drawers = {
        "figure3a_baseline_vs_variants": lambda p: figure_3a(t1, ref, p),
        "figure3b_augmentation_count": lambda p: figure_3b(aug, p),
        "figure4_group_accuracy": lambda p: figure_4(units, ref, groups, p, level),
        "figure5_proportion_search": lambda p: figure_5(ratio, groups, p),
        "figure6_downstream_modes": lambda p: figure_6(t1, p),
    }
    figures: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name, draw in drawers.items():
        path = draw(out / f"{name}.png")
        if path is None:
            missing[name] = MISSING_REASONS[name]
        else:
            figures[name] = path
    return figures, missing


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
    base = baseline_row(ref, [])
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
        base = baseline_row(ref, groups)
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
