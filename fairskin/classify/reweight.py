"""Level 3: dynamic rebalancing from each epoch's validation accuracy per group, A_g.

The paper's "dynamic reweighting" has two readings; the downstream mode picks one:

* ``reweight``: per-sample loss weights w_g = 1 / max(A_g, floor), normalised so the mean
  weight over the epoch's training rows is 1;
* ``resample``: the augmentation's group composition is re-drawn each epoch in proportion to
  1 / max(A_g, floor) within the plan's total, each group capped at what the pool holds
  (n_diseases x its smallest subclass pool), the excess spread over the other groups;
* ``random``: the plan is kept fixed (weights 1).

Before the first validation (epoch 0) every mode behaves like ``random``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Mode = Literal["random", "resample", "reweight"]


def inverse_accuracy(accuracy: Mapping[str, float], groups: Sequence[str], floor: float) -> np.ndarray:
    """1 / max(A_g, floor) per group, in ``groups`` order (missing or NaN A_g counts as the floor)."""
    values = []
    for g in groups:
        a = accuracy.get(g, float("nan"))
        values.append(1.0 / max(floor, a) if np.isfinite(a) else 1.0 / floor)
    return np.asarray(values, float)


def group_loss_weights(
    accuracy: Mapping[str, float], groups: Sequence[str], row_groups: np.ndarray, floor: float
) -> np.ndarray:
    """Per-group loss weights (float64, (G,)), normalised so the mean over ``row_groups`` (group ids) is 1."""
    raw = inverse_accuracy(accuracy, groups, floor)
    mean = raw[np.asarray(row_groups, int)].mean() if len(row_groups) else 1.0
    return raw / mean


def capped_proportions(desired: np.ndarray, capacity: np.ndarray, total: int) -> np.ndarray:
    """Proportions close to ``desired`` (sum 1) with total * p_g <= capacity_g (water-filling).

    Groups at their cap keep it; the remaining total is spread over the others in proportion
    to their desired shares. Raises ValueError if the pool cannot hold ``total`` at all.
    """
    desired = np.asarray(desired, float) / np.sum(desired)
    capacity = np.asarray(capacity, float)
    if capacity.sum() < total:
        raise ValueError(f"the pool holds {int(capacity.sum())} images for these groups, fewer than the total {total}")
    counts = np.zeros_like(desired)
    free = np.ones(len(desired), bool)
    remaining = float(total)
    while remaining > 1e-9 and free.any():
        share = desired * free
        if share.sum() == 0:  # only zero-desire groups left: fill them in capacity order
            share = free.astype(float)
        share = share / share.sum()
        proposal = counts + share * remaining
        over = free & (proposal > capacity)
        if not over.any():
            counts = proposal
            break
        counts[over] = capacity[over]
        free &= ~over
        remaining = total - counts.sum()
    return counts / total if total else desired


@dataclass
class Rebalancer:
    """Keeps A_g from the last validation and turns it into the next epoch's weights or proportions."""

    mode: Mode
    groups: Sequence[str]
    floor: float = 0.05
    accuracy: dict[str, float] = field(default_factory=dict)

    def update(self, accuracy: Mapping[str, float]) -> None:
        """Record this epoch's validation accuracy per group."""
        self.accuracy = {g: float(accuracy[g]) for g in self.groups if g in accuracy}

    def loss_weights(self, row_groups: np.ndarray) -> np.ndarray:
        """Per-group loss weights (G,) for the coming epoch; ones unless mode is ``reweight``."""
        if self.mode != "reweight" or not self.accuracy:
            weights = np.ones(len(self.groups))
        else:
            weights = group_loss_weights(self.accuracy, self.groups, row_groups, self.floor)
        return weights

    def proportions(self, base: Mapping[str, float], capacity: Mapping[str, int], total: int) -> dict[str, float]:
        """Group proportions for the coming epoch; ``base`` unless mode is ``resample``."""
        if self.mode != "resample" or not self.accuracy:
            chosen = {g: float(base.get(g, 0.0)) for g in self.groups}
        else:
            desired = inverse_accuracy(self.accuracy, self.groups, self.floor)
            cap = np.asarray([capacity.get(g, 0) for g in self.groups], float)
            chosen = dict(zip(self.groups, capped_proportions(desired, cap, total).tolist()))
        return chosen
