"""A finished (or interrupted) study as tables and plots: trials, best trial, Pareto front.

Pure functions of a trials table (one row per trial: its config columns, its last reported
figures). Only trials that ran every epoch count for best / Pareto (ASHA-stopped ones
did not reach the same point).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Non-dominated rows of ``values`` (N, K) for directions ``modes`` ("max"/"min" per column)."""
    v = np.asarray(values, float) * np.array([1.0 if m == "max" else -1.0 for m in modes])
    n = len(v)
    keep = np.ones(n, bool)
    for i in range(n):
        dominated_by = np.all(v >= v[i], axis=1) & np.any(v > v[i], axis=1)
        keep[i] = not dominated_by.any()
    return keep


def complete_trials(trials: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Trials that reported every epoch (and so have test figures)."""
    if trials.empty or "epoch" not in trials:
        return trials.iloc[0:0]
    return trials[trials["epoch"].fillna(0).astype(int) >= epochs]


def pareto_front(trials: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> pd.DataFrame:
    """Rows of ``trials`` on the Pareto front of ``metrics``, sorted by the first objective (best first)."""
    ok = trials.dropna(subset=list(metrics))
    if ok.empty:
        return ok
    front = ok[pareto_mask(ok[list(metrics)].to_numpy(), modes)]
    return front.sort_values(metrics[0], ascending=modes[0] == "min")


def best_trial(trials: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> pd.Series | None:
    """The best trial by the first objective (ties broken by the next ones)."""
    ok = trials.dropna(subset=list(metrics))
    if ok.empty:
        return None
    return ok.sort_values(list(metrics), ascending=[m == "min" for m in modes]).iloc[0]


def plot_objectives_by_trial(
    trials: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str], path: Path, title: str
) -> Path:
    """Each objective per trial (in start order) with its running best."""
    from fairskin.metrics.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.6 * len(metrics)), squeeze=False)
    order = (trials.sort_values("trial") if "trial" in trials else trials).reset_index(drop=True)
    x = np.arange(1, len(order) + 1)
    for ax, metric, mode in zip(axes[:, 0], metrics, modes):
        y = order[metric].to_numpy(float) if metric in order else np.full(len(order), np.nan)
        ax.plot(x, y, "o", label=metric)
        filled = np.where(np.isnan(y), -np.inf if mode == "max" else np.inf, y)
        running = np.maximum.accumulate(filled) if mode == "max" else np.minimum.accumulate(filled)
        ax.step(x, np.where(np.isfinite(running), running, np.nan), where="post", label=f"best so far ({mode})")
        ax.set_ylabel(metric)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("trial (start order)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ternary(trials: pd.DataFrame, groups: Sequence[str], metric: str, path: Path, title: str) -> Path:
    """Proportions of three groups on a ternary plot (equilateral triangle), coloured by ``metric``."""
    from fairskin.metrics.plots import _pyplot

    if len(groups) != 3:
        raise ValueError(f"a ternary plot needs 3 groups, got {list(groups)}")
    plt = _pyplot()
    cols = [f"proportions.{g}" for g in groups]
    ok = trials.dropna(subset=cols + [metric])
    p = ok[cols].to_numpy(float)
    # Barycentric -> Cartesian: vertices at (0, 0), (1, 0), (0.5, sqrt(3)/2) for groups 0, 1, 2.
    xy = p @ np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    fig, ax = plt.subplots(figsize=(6, 5.4))
    tri = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 0]])
    ax.plot(tri[:, 0], tri[:, 1], "k-", lw=1)
    for t in (0.25, 0.5, 0.75):  # grid lines of constant share per group
        for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
            pts = np.zeros((2, 3))
            pts[:, a] = t
            pts[0, b], pts[1, c] = 1 - t, 1 - t
            seg = pts @ np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
            ax.plot(seg[:, 0], seg[:, 1], color="0.85", lw=0.6, zorder=0)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=ok[metric].to_numpy(float), cmap="viridis", s=40, edgecolor="k", lw=0.4)
    fig.colorbar(sc, ax=ax, label=metric, shrink=0.8)
    for (vx, vy), g, dx, dy in zip(tri[:3], groups, (-0.04, 0.04, 0.0), (-0.05, -0.05, 0.03)):
        ax.text(vx + dx, vy + dy, g, ha="center", fontsize=10)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_generator_tradeoff(
    trials: pd.DataFrame, groups: Sequence[str], path: Path, title: str, x: str = "cbdm_tau"
) -> Path:
    """Generator studies: per group, skin-tone agreement and disease fidelity of each finished trial
    against ``x`` (the effective CBDM tau the trial reported; log axis when all are positive): the
    trade-off curve. One marker per trial and group, joined faintly in ``x`` order (the trials differ in
    their other settings too, so the joins guide the eye and are not a fitted curve)."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    from fairskin.metrics.plots import _pyplot

    plt = _pyplot()
    panels = (("skin_tone_agreement", "skin-tone agreement"), ("disease_fidelity", "disease fidelity"))
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4), squeeze=False)
    order = trials.dropna(subset=[x]).sort_values(x) if x in trials else trials.iloc[0:0]
    xs = order[x].to_numpy(float) if len(order) else np.zeros(0)
    for ax, (prefix, label) in zip(axes[0], panels):
        for g in groups:
            col = f"{prefix}_{g}"
            if col in order:
                (line,) = ax.plot(xs, order[col].to_numpy(float), "-", lw=1, alpha=0.35)
                ax.plot(xs, order[col].to_numpy(float), "o", color=line.get_color(), label=g)
        if f"{prefix}_worst_group" in order:
            ax.plot(xs, order[f"{prefix}_worst_group"].to_numpy(float), "k--", lw=1, label="worst group")
        if len(xs) and np.all(xs > 0):
            ax.set_xscale("log")
            # Ticks at 1 and 3 per decade, plainly written: over less than two decades matplotlib's default
            # labels every minor tick in scientific notation and they run into each other.
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{x} (per trial)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(
    trials: pd.DataFrame, front: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str], path: Path, title: str
) -> Path:
    """The first two objectives of every finished trial, the Pareto front marked (a third objective,
    if any, colours the points)."""
    from fairskin.metrics.plots import _pyplot

    plt = _pyplot()
    a, b = metrics[0], metrics[1]
    ok = trials.dropna(subset=[a, b])
    fig, ax = plt.subplots(figsize=(6, 5))
    colour = ok[metrics[2]].to_numpy(float) if len(metrics) > 2 and metrics[2] in ok else None
    sc = ax.scatter(ok[a], ok[b], c=colour, cmap="viridis", s=40, edgecolor="k", lw=0.4, label="trials")
    if colour is not None:
        fig.colorbar(sc, ax=ax, label=f"{metrics[2]} ({modes[2]})", shrink=0.8)
    if len(front):
        f = front.sort_values(a)
        ax.plot(f[a], f[b], "r-", lw=1)
        ax.scatter(f[a], f[b], facecolor="none", edgecolor="r", s=120, lw=1.2, label="Pareto front")
    ax.set_xlabel(f"{a} ({modes[0]})")
    ax.set_ylabel(f"{b} ({modes[1]})")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
