"""Classifier fairness from (y_true, y_pred, group): accuracy per group, DP, ESSP, equalised odds.

Definitions (DESIGN.md, FairSkin paper section 4.1):

* accuracy, accuracy per group A_g, worst-group accuracy min_g A_g;
* **DP** (the paper): for each class c, one-vs-rest, sum over groups g of
  |P(y_hat = c) - P(y_hat = c | g)|; averaged over the classes c;
* **DP max-min**: for each class c, max_g P(y_hat = c | g) - min_g P(y_hat = c | g); averaged over c;
* **DP oracle floor**: the paper's DP of a perfect classifier (y_hat = y) on the same labels;
  it is > 0 whenever disease mixes differ by group, so DP is read against it;
* **ESSP** (the paper) = accuracy / (1 + DP);
* **ESSP FairSeg** (Tian et al. 2024) = accuracy / (1 + sum_g |A_g - accuracy|);
* **equalised-odds gap**: for each class c, one-vs-rest, the larger of the spread over groups
  of the true-positive rate and of the false-positive rate; averaged over c. A group with no
  positives (negatives) of c has no TPR (FPR) for c and is left out of that spread.

Classes are the union of the true and predicted labels unless given. Intervals are
percentile bootstrap 95% intervals, resampling test samples within each group (so group
sizes are fixed), seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SCALAR_KEYS = (
    "accuracy",
    "worst_group_accuracy",
    "dp",
    "dp_maxmin",
    "dp_oracle_floor",
    "essp",
    "essp_fairseg",
    "eo_gap",
)


@dataclass(frozen=True)
class Encoded:
    """Labels as integer codes: y_true, y_pred (N,) into ``classes``; group (N,) into ``groups``."""

    y_true: np.ndarray
    y_pred: np.ndarray
    group: np.ndarray
    classes: tuple
    groups: tuple


def encode(
    y_true: Sequence, y_pred: Sequence, group: Sequence, classes: Sequence | None = None, groups: Sequence | None = None
) -> Encoded:
    """Map labels (strings or ints) to codes; raises ValueError on length mismatch or unknown labels."""
    y_true, y_pred, group = np.asarray(y_true), np.asarray(y_pred), np.asarray(group)
    if not (len(y_true) == len(y_pred) == len(group)):
        raise ValueError(f"y_true, y_pred and group differ in length: {len(y_true)}, {len(y_pred)}, {len(group)}")
    if len(y_true) == 0:
        raise ValueError("no samples")
    classes = tuple(classes) if classes is not None else tuple(sorted(set(y_true.tolist()) | set(y_pred.tolist())))
    groups = tuple(groups) if groups is not None else tuple(sorted(set(group.tolist())))
    c_index, g_index = {c: i for i, c in enumerate(classes)}, {g: i for i, g in enumerate(groups)}
    try:
        codes = (
            np.array([c_index[v] for v in y_true.tolist()]),
            np.array([c_index[v] for v in y_pred.tolist()]),
            np.array([g_index[v] for v in group.tolist()]),
        )
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]!r} is not among the classes/groups given") from None
    return Encoded(*codes, classes, groups)


def _rates(pred: np.ndarray, group: np.ndarray, n_classes: int, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(P(y_hat = c) shape (C,), P(y_hat = c | g) shape (G, C)); groups without samples are NaN."""
    overall = np.bincount(pred, minlength=n_classes) / len(pred)
    per_group = np.full((n_groups, n_classes), np.nan)
    for g in range(n_groups):
        mask = group == g
        if mask.any():
            per_group[g] = np.bincount(pred[mask], minlength=n_classes) / mask.sum()
    return overall, per_group


def demographic_parity(pred: np.ndarray, group: np.ndarray, n_classes: int, n_groups: int) -> tuple[float, float]:
    """(paper DP, max-min DP), both averaged one-vs-rest over the classes."""
    overall, per_group = _rates(pred, group, n_classes, n_groups)
    present = ~np.isnan(per_group[:, 0])
    paper = np.abs(per_group[present] - overall).sum(axis=0).mean()
    maxmin = (per_group[present].max(axis=0) - per_group[present].min(axis=0)).mean()
    return float(paper), float(maxmin)


def equalised_odds_gap(y_true: np.ndarray, pred: np.ndarray, group: np.ndarray, n_classes: int, n_groups: int) -> float:
    """Mean over classes of max(TPR spread, FPR spread) across groups (one-vs-rest)."""
    gaps = []
    for c in range(n_classes):
        tpr, fpr = [], []
        for g in range(n_groups):
            mask = group == g
            pos, neg = mask & (y_true == c), mask & (y_true != c)
            if pos.any():
                tpr.append((pred[pos] == c).mean())
            if neg.any():
                fpr.append((pred[neg] == c).mean())
        spread = [max(r) - min(r) for r in (tpr, fpr) if len(r) >= 2]
        if spread:
            gaps.append(max(spread))
    return float(np.mean(gaps)) if gaps else 0.0


def _point(e: Encoded) -> dict[str, float]:
    n_c, n_g = len(e.classes), len(e.groups)
    correct = e.y_true == e.y_pred
    accuracy = float(correct.mean())
    per_group = {}
    for g, name in enumerate(e.groups):
        mask = e.group == g
        per_group[name] = float(correct[mask].mean()) if mask.any() else float("nan")
    present = [v for v in per_group.values() if not np.isnan(v)]
    dp, dp_maxmin = demographic_parity(e.y_pred, e.group, n_c, n_g)
    oracle, _ = demographic_parity(e.y_true, e.group, n_c, n_g)
    out = {
        "accuracy": accuracy,
        **{f"accuracy_{name}": value for name, value in per_group.items()},
        "worst_group_accuracy": float(min(present)),
        "dp": dp,
        "dp_maxmin": dp_maxmin,
        "dp_oracle_floor": oracle,
        "essp": accuracy / (1.0 + dp),
        "essp_fairseg": accuracy / (1.0 + float(sum(abs(v - accuracy) for v in present))),
        "eo_gap": equalised_odds_gap(e.y_true, e.y_pred, e.group, n_c, n_g),
    }
    return out


def fairness_report(
    y_true: Sequence,
    y_pred: Sequence,
    group: Sequence,
    *,
    classes: Sequence | None = None,
    groups: Sequence | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | list[float]]:
    """Every figure above under DESIGN.md's flat keys, with ``<key>_ci`` = [low, high] when ``bootstrap`` > 0.

    Inputs: three sequences of N labels (strings or ints). Figures are fractions in [0, 1]
    (DP can exceed 1: it sums over groups).
    """
    e = encode(y_true, y_pred, group, classes, groups)
    point = _point(e)
    if bootstrap <= 0:
        return point
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(e.group == g) for g in range(len(e.groups))]
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(bootstrap):
        idx = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members if len(m)])
        figures = _point(Encoded(e.y_true[idx], e.y_pred[idx], e.group[idx], e.classes, e.groups))
        for k, v in figures.items():
            samples[k].append(v)
    tail = (1.0 - level) / 2 * 100
    out: dict[str, float | list[float]] = dict(point)
    for k, values in samples.items():
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        out[f"{k}_ci"] = [float(low), float(high)]
    return out


def format_report(report: Mapping[str, float | list[float]]) -> str:
    """Human-readable lines: ``key  value  [low, high]``."""
    lines = []
    for key, value in report.items():
        if key.endswith("_ci"):
            continue
        ci = report.get(f"{key}_ci")
        interval = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if isinstance(ci, list) else ""
        lines.append(f"{key:<28} {float(value):.4f}{interval}")
    return "\n".join(lines)
