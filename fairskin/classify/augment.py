"""Level 3: imbalance-aware augmentation plans — how many pool images of each subclass to add.

Three kinds (DESIGN.md):

* ``balance_to`` T: m_rd = max(0, T - N_rd), the paper's default of balancing subclasses;
* ``per_subclass`` c: m_rd = c for every subclass (the paper's 500-900 sweep);
* ``group_proportions``: a total M split over groups by proportions p_g (non-negative, summing
  to 1), then equally over the diseases within a group (largest remainders, so the total is M).

A plan is checked against the pool before use: no subclass may ask for more images than the
pool holds (the error names the subclass and the largest valid proportion or count). Rows
are drawn from the pool without replacement, deterministically by (seed, subclass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fairskin.data.fitzpatrick import stable_int

Subclass = tuple[str, str]


class PlanError(ValueError):
    """An augmentation plan that cannot be met: the message says what would be valid."""


class AugmentPlan(BaseModel):
    """One augmentation plan; ``kind="none"`` adds nothing (the real-data-only baseline)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf / nan are refused, naming the field

    kind: Literal["none", "balance_to", "per_subclass", "group_proportions"] = "none"
    balance_to: int | None = Field(None, ge=0)
    per_subclass: int | None = Field(None, ge=0)
    total: int | None = Field(None, ge=0)
    proportions: dict[str, float] | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> AugmentPlan:
        need = {
            "balance_to": ["balance_to"],
            "per_subclass": ["per_subclass"],
            "group_proportions": ["total", "proportions"],
            "none": [],
        }[self.kind]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"plan kind {self.kind!r} needs {missing}")
        if self.proportions is not None:
            # allow_inf_nan covers validation; this also holds for model_construct / assignment.
            bad = {g: p for g, p in self.proportions.items() if not math.isfinite(p)}
            if bad:
                raise ValueError(f"proportions must be finite numbers, got {bad}")
            negative = {g: p for g, p in self.proportions.items() if p < 0}
            if negative:
                raise ValueError(f"proportions must be non-negative, got {negative}")
            total = sum(self.proportions.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"proportions must sum to 1, got {total:.6f} ({self.proportions})")
        return self


def _largest_remainder(total: int, shares: Sequence[float]) -> list[int]:
    """Integers summing to ``total`` closest to total * shares (shares sum to 1)."""
    raw = np.asarray(shares, float) * total
    counts = np.floor(raw).astype(int)
    short = total - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:short]] += 1
    return counts.tolist()


def plan_counts(
    plan: AugmentPlan, train_counts: Mapping[Subclass, int], groups: Sequence[str], diseases: Sequence[str]
) -> dict[Subclass, int]:
    """m_rd for every (group, disease) in ``groups`` x ``diseases``."""
    subclasses = [(g, d) for g in groups for d in diseases]
    if plan.kind == "none":
        return {s: 0 for s in subclasses}
    if plan.kind == "balance_to":
        return {s: max(0, int(plan.balance_to) - int(train_counts.get(s, 0))) for s in subclasses}
    if plan.kind == "per_subclass":
        return {s: int(plan.per_subclass) for s in subclasses}
    unknown = sorted(set(plan.proportions) - set(groups))
    if unknown:
        raise PlanError(f"proportions name unknown group(s) {unknown}; groups are {list(groups)}")
    per_group = _largest_remainder(int(plan.total), [plan.proportions.get(g, 0.0) for g in groups])
    counts = {}
    for g, n in zip(groups, per_group):
        for d, m in zip(diseases, _largest_remainder(n, [1 / len(diseases)] * len(diseases))):
            counts[(g, d)] = m
    return counts


def pool_counts(pool_meta: pd.DataFrame) -> dict[Subclass, int]:
    """Images per (group, disease) in a pool's metadata."""
    return {k: int(v) for k, v in pool_meta.groupby(["group", "disease"]).size().items()}


def check_against_pool(
    plan: AugmentPlan,
    counts: Mapping[Subclass, int],
    pool: Mapping[Subclass, int],
    diseases: Sequence[str],
    train_counts: Mapping[Subclass, int] | None = None,
) -> None:
    """Raise PlanError naming the first subclass that asks more than the pool holds, and the
    largest valid value of the plan's parameter."""
    for (g, d), m in sorted(counts.items()):
        held = pool.get((g, d), 0)
        if m <= held:
            continue
        head = f"subclass ({g}, {d}) asks {m} images but the pool holds {held}"
        if plan.kind == "group_proportions":
            capacity = min(pool.get((g, dd), 0) for dd in diseases) * len(diseases)
            largest = capacity / plan.total if plan.total else 0.0
            raise PlanError(
                f"{head}: with total {plan.total}, the largest valid proportion for {g} is "
                f"{largest:.4f} (got {plan.proportions.get(g, 0.0)})"
            )
        if plan.kind == "per_subclass":
            raise PlanError(f"{head}: the largest valid per_subclass is {min(pool.get(s, 0) for s in counts)}")
        train = train_counts or {}
        largest = min(pool.get(s, 0) + int(train.get(s, 0)) for s in counts)
        raise PlanError(f"{head}: the largest valid balance_to is {largest}")


def draw_from_pool(
    counts: Mapping[Subclass, int], pool_meta: pd.DataFrame, seed: int, epoch: int | None = None
) -> np.ndarray:
    """Pool row indices (int64) for the plan: m_rd rows of each subclass, without replacement.

    Deterministic by (seed, subclass[, epoch]); rows are taken from the pool sorted by id, so
    the draw does not depend on the pool's row order.
    """
    picked = []
    for (g, d), m in sorted(counts.items()):
        if m <= 0:
            continue
        rows = pool_meta.index[(pool_meta["group"] == g) & (pool_meta["disease"] == d)].to_numpy()
        if m > len(rows):
            raise PlanError(f"subclass ({g}, {d}) asks {m} images but the pool holds {len(rows)}")
        rows = rows[np.argsort(pool_meta.loc[rows, "id"].to_numpy(), kind="stable")]
        key = [seed, stable_int(g), stable_int(d)] + ([] if epoch is None else [epoch])
        rng = np.random.default_rng(np.random.SeedSequence(key))
        picked.append(rows[rng.choice(len(rows), size=m, replace=False)])
    if not picked:
        return np.zeros(0, np.int64)
    positions = np.concatenate(picked)
    return np.asarray([pool_meta.index.get_loc(i) for i in positions], dtype=np.int64)
