"""Plots written as PNG files (matplotlib, Agg backend) for MLflow artifacts and reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_subclass_counts(table: pd.DataFrame, path: Path, title: str = "Images per subclass") -> Path:
    """Grouped bar chart of ``count`` per disease, one bar per group (log scale), split shares stacked."""
    plt = _pyplot()
    groups = sorted(table["group"].unique())
    diseases = sorted(table["disease"].unique())
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(groups)
    x = np.arange(len(diseases))
    for i, group in enumerate(groups):
        sub = table[table["group"] == group].set_index("disease").reindex(diseases).fillna(0)
        bottom = np.zeros(len(diseases))
        for split, alpha in (("train", 1.0), ("val", 0.6), ("test", 0.35)):
            values = sub[split].to_numpy(float)
            ax.bar(
                x + i * width,
                values,
                width,
                bottom=bottom,
                color=f"C{i}",
                alpha=alpha,
                label=f"{group} ({split})" if split == "train" else None,
            )
            bottom += values
        for xi, total in zip(x + i * width, sub["count"].to_numpy(int)):
            ax.text(xi, total, str(total), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x + width * (len(groups) - 1) / 2)
    ax.set_xticklabels([d.replace(" ", "\n", 1) for d in diseases], fontsize=8)
    ax.set_ylabel("images (train dark, val/test light)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_image_grid(
    images: Sequence[np.ndarray], row_labels: Sequence[str], col_labels: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Grid of uint8 (H, W, 3) images, ``len(row_labels)`` x ``len(col_labels)``, row-major."""
    plt = _pyplot()
    rows, cols = len(row_labels), len(col_labels)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols + 1.5, 1.4 * rows + 0.6), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            k = i * cols + j
            if k < len(images):
                ax.imshow(images[k])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title(col_labels[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_group_accuracy(report: dict, groups: Sequence[str], path: Path, title: str = "Accuracy per group") -> Path:
    """Bars of overall and per-group accuracy with their 95% intervals (``<key>_ci``), DP in the title."""
    plt = _pyplot()
    keys = ["accuracy"] + [f"accuracy_{g}" for g in groups]
    labels = ["overall"] + list(groups)
    values = np.array([report[k] for k in keys], float)
    ci = [report.get(f"{k}_ci") for k in keys]
    err = np.array([[v - c[0], c[1] - v] if c else [0, 0] for v, c in zip(values, ci)]).T
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.bar(labels, values, yerr=err, capsize=4, color=["0.5"] + [f"C{i}" for i in range(len(groups))])
    for x, v in enumerate(values):
        ax.text(x, v / 2, f"{v:.2f}", ha="center", color="white", fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy (95% bootstrap interval)")
    ax.set_title(
        f"{title}\nDP {report['dp']:.3f} (oracle floor {report['dp_oracle_floor']:.3f}), "
        f"ESSP {report['essp']:.3f}, ESSP-FairSeg {report['essp_fairseg']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _scatter_by(ax, points: np.ndarray, labels: np.ndarray, title: str) -> None:
    """One colour per distinct label (in sorted order), with a legend."""
    for i, label in enumerate(sorted(pd.unique(labels), key=str)):
        sel = labels == label
        ax.scatter(points[sel, 0], points[sel, 1], s=10, color=f"C{i % 10}", label=str(label), alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=1.5, loc="best")


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (N, 2) of features (N, D): PCA init, seeded; perplexity min(30, (N - 1) / 3), at least 1.

    Runs with one OpenMP thread: sklearn's Barnes-Hut t-SNE took 44 s instead of 0.24 s for 40
    points on a busy 2-core machine with its default threads, and one thread keeps the result
    reproducible for a seed.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, np.float32)
    if len(features) < 3:
        raise ValueError(f"t-SNE needs >= 3 points, got {len(features)}")
    perplexity = max(1.0, min(30.0, (len(features) - 1) / 3))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def plot_tsne(
    features: np.ndarray,
    groups: np.ndarray,
    diseases: np.ndarray,
    path: Path,
    title: str = "t-SNE of image features",
    seed: int = 0,
) -> Path:
    """t-SNE of features (N, D) in two panels, coloured by group (N,) and by disease (N,) (the paper's Table 3)."""
    plt = _pyplot()
    points = tsne_embedding(features, seed)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    _scatter_by(axes[0], points, np.asarray(groups), "by group")
    _scatter_by(axes[1], points, np.asarray(diseases), "by disease")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_fid_heatmap(
    per_subclass: pd.DataFrame, path: Path, title: str = "FID per subclass", value: str = "fid"
) -> Path:
    """Group x disease heatmap of ``value`` (columns group, disease, value), numbers written in the cells."""
    plt = _pyplot()
    table = per_subclass.set_index(["group", "disease"])[value].unstack("disease")
    table = table.reindex(index=pd.unique(per_subclass["group"]), columns=pd.unique(per_subclass["disease"]))
    values = table.to_numpy(float)
    fig, ax = plt.subplots(figsize=(1.5 * values.shape[1] + 2.5, 0.7 * values.shape[0] + 1.8))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if len(finite) else 0.0
    spec = ".2f" if len(finite) and np.abs(finite).max() < 10 else ".1f"  # ratios and shares need two decimals
    for (i, j), v in np.ndenumerate(values):
        text = format(v, spec) if np.isfinite(v) else "n/a"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="black" if np.isfinite(v) and v > middle else "white" if np.isfinite(v) else "0.4",
        )
    ax.set_xticks(range(values.shape[1]))
    ax.set_xticklabels([str(d).replace(" ", "\n", 1) for d in table.columns], fontsize=8)
    ax.set_yticks(range(values.shape[0]))
    ax.set_yticklabels([str(g) for g in table.index], fontsize=8)
    fig.colorbar(image, ax=ax, label=value)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_method_state(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path: Path,
    title: str = "Method state over steps",
    groups: Sequence[str] = (),
) -> Path:
    """The series of ``history`` (name -> (step, value) pairs) over the fine-tune's steps, saved as a PNG at
    ``path``: those named after a group (ending in one of ``groups``' slugs: FairDiffusion's sigma per group) in
    the upper panel, the others (its y) in the lower one."""
    import re

    slugs = tuple("_" + re.sub(r"[^a-z0-9]+", "_", g.lower()).strip("_") for g in groups)
    per_group = {k: v for k, v in history.items() if slugs and k.endswith(slugs)}
    others = {k: v for k, v in history.items() if k not in per_group}
    panels = [p for p in (per_group, others) if p]
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.4, 2.4 + 1.6 * len(panels)), sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for name, points in sorted(panel.items()):
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker=".", markersize=3, linewidth=1, label=name)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("fine-tune step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sequential_looks(table: pd.DataFrame, looks: Sequence[int], path: Path) -> Path:
    """The looks of a run until conclusive (``table``: rows of variant, endpoint, n, t, boundary, t_tost,
    equivalence_boundary, as :func:`fairskin.metrics.sequential.sequential_verdicts` gives them, one set per look),
    one column per endpoint: |t| against the efficacy boundary (better / worse when above it) on top, the smaller
    TOST statistic against the equivalence boundary (equivalent when above it) below, over the repeats; the
    design's looks ``looks`` as ticks. Saved as a PNG at ``path``."""
    plt = _pyplot()
    endpoints = list(dict.fromkeys(table["endpoint"]))
    fig, axes = plt.subplots(2, len(endpoints), figsize=(3.6 * len(endpoints) + 1, 5.2), squeeze=False, sharex=True)
    for col, endpoint in enumerate(endpoints):
        part = table[table["endpoint"] == endpoint]
        for row, (stat, bound, label) in enumerate(
            (
                ("t", "boundary", "|t| (better / worse above)"),
                ("t_tost", "equivalence_boundary", "TOST (equivalent above)"),
            )
        ):
            ax = axes[row, col]
            first = part.drop_duplicates("n").sort_values("n")
            ax.plot(first["n"], first[bound], "k--", linewidth=1, label="boundary")
            for variant, rows in part.groupby("variant", sort=False):
                rows = rows.sort_values("n")
                values = rows[stat].abs() if stat == "t" else rows[stat]
                ax.plot(rows["n"], values, marker="o", markersize=4, linewidth=1, label=variant)
            ax.set_xticks(list(looks))
            ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(endpoint, fontsize=9)
            else:
                ax.set_xlabel("generator repeats")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
