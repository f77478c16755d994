"""A search space resolved for one preset and set of pools: what trials sample and how a config becomes a plan.

:func:`fairskin.tune.spaces.resolve_space` (and ``resolve_generator_space``) make a :class:`ResolvedSpace`
from a :class:`~fairskin.tune.space_schema.SearchSpace`: counts scaled to the preset
(:func:`scale_count`), one :class:`Dim` per searched parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fairskin.classify.augment import AugmentPlan
from fairskin.tune.space_schema import COUNT_TARGETS, Scheduler


def scale_count(value: float, scale: float) -> int:
    """A count in paper units -> this preset's units: round(value * scale), at least 1 when value > 0."""
    if value <= 0:
        return 0
    return max(1, int(round(value * scale)))


@dataclass(frozen=True)
class Dim:
    """One resolved dimension: counts already scaled; simplex bounds per group (after the pool)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple[Any, ...] = ()
    total: int | None = None
    groups: tuple[str, ...] = ()
    lows: tuple[float, ...] = ()
    highs: tuple[float, ...] = ()


@dataclass(frozen=True)
class ResolvedSpace:
    """A space for one preset and set of pools: what trials sample and how a config becomes a plan."""

    name: str
    search: str
    trials: int
    startup_trials: int | None
    metrics: tuple[str, ...]
    modes: tuple[str, ...]  # objective directions, "max"/"min"
    scheduler: Scheduler
    search_seed: int
    train_seeds: tuple[int, ...]
    dims: tuple[Dim, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # mode, variant, seed: values every trial gets
    fixed_plan: AugmentPlan | None = None
    variants: tuple[str, ...] = ()
    count_scale: float = 1.0
    trainable: str = "classifier"
    fixed_generator: dict[str, Any] = field(default_factory=dict)  # generator studies: fixed VariantSpec fields

    @property
    def expected_trials(self) -> int:
        """Trials a complete study has: ``trials``, or the grid's size (choices x training seeds)."""
        if self.search != "grid":
            return self.trials
        size = math.prod(len(d.values) for d in self.dims)
        return size * (1 if "seed" in self.fixed else len(self.train_seeds))

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def dim(self, name: str) -> Dim | None:
        return next((d for d in self.dims if d.name == name), None)

    def plan_for(self, trial_config: Mapping[str, Any]) -> AugmentPlan:
        """The augmentation plan of a trial config (scaled counts)."""
        if "proportions" in trial_config:
            d = self.dim("proportions")
            return AugmentPlan(
                kind="group_proportions",
                total=d.total,
                proportions=_exact_simplex(trial_config["proportions"], d.groups),
            )
        for key in COUNT_TARGETS:
            if key in trial_config:
                return AugmentPlan(kind=key, **{key: int(trial_config[key])})
        return self.fixed_plan or AugmentPlan()

    def classifier_overrides(self, trial_config: Mapping[str, Any]) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in trial_config.items() if k.startswith("classifier.")}

    def describe(self) -> dict[str, Any]:
        """Flat, loggable summary (MLflow params of the parent run)."""
        out: dict[str, Any] = {
            "space.name": self.name,
            "space.trainable": self.trainable,
            "space.search": self.search,
            "space.trials": self.trials,
            "space.objectives": ",".join(f"{m}:{d}" for m, d in zip(self.metrics, self.modes)),
            "space.scheduler": self.scheduler.kind,
            "space.seed": self.search_seed,
            "space.train_seeds": ",".join(map(str, self.train_seeds)),
            "space.count_scale": self.count_scale,
            "space.variants": ",".join(self.variants),
        }
        for d in self.dims:
            if d.kind == "simplex":
                out[f"space.{d.name}"] = f"simplex total={d.total} " + " ".join(
                    f"{g}:[{lo:.4f},{hi:.4f}]" for g, lo, hi in zip(d.groups, d.lows, d.highs)
                )
            elif d.kind == "choice":
                out[f"space.{d.name}"] = "choice " + ",".join(map(str, d.values))
            else:
                out[f"space.{d.name}"] = f"{d.kind} [{d.low}, {d.high}] step={d.step} log={d.log}"
        for k, v in self.fixed_generator.items():
            out[f"space.fixed.{k}"] = v
        if self.fixed_plan is not None:
            out["space.fixed_plan"] = self.fixed_plan.model_dump_json(exclude_none=True)
        return out


def _exact_simplex(p: Mapping[str, float], groups: Sequence[str]) -> dict[str, float]:
    """Renormalise away float round-off so AugmentPlan's sum-to-1 check holds exactly enough."""
    values = [max(0.0, float(p.get(g, 0.0))) for g in groups]
    total = sum(values)
    return {g: v / total for g, v in zip(groups, values)}
