"""Search spaces: YAML files in ``tune_spaces/``, validated, scaled to a preset and checked against pools.

A space names its parameters (ranges or choices), objectives and directions, the number
of trials, the search (``tpe``, ``random`` or ``grid``), the scheduler (``fifo`` or ``asha``
over epochs) and the seeds. Parameters are a registry of *targets* (what a value sets):

* ``proportions`` (kind ``simplex``): group proportions of a fixed total M of synthetic
  images -> ``AugmentPlan(kind="group_proportions")``;
* ``per_subclass`` / ``balance_to`` (kind ``int``): image counts -> the plan of that kind;
* ``mode`` (kind ``choice``): the downstream mode; ``variant`` (kind ``choice``, ``values:
  all`` = every variant with a pool): which pool a trial draws from;
* ``classifier.<field>`` (``int``/``float``/``choice``): a classifier setting.

**Units.** Image counts (``total``, ``per_subclass``, ``balance_to``, counts in
``fixed.plan``) are written in ``paper`` units and multiplied by ``tune.count_scale``
(rounded, at least 1 for a positive count) when a space is resolved for a preset: demo 0.1,
smoke 0.02, paper 1.

**Simplex.** Proportions are drawn from K-1 uniforms by the sequential conditional inverse
CDF of the uniform distribution on {p : low_g <= p_g <= high_g, sum p = 1}: p_1 from its exact
marginal, then p_2 given p_1, and so on; the last group takes the remainder. It is exactly
uniform on the bounded simplex, a deterministic (and in each u_i monotone) map of the unit
cube that TPE can model, and no trial is rejected. The pool bounds each group: a group's
share of M may not exceed what its smallest subclass pool holds times the number of diseases.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fairskin.classify.augment import AugmentPlan, PlanError, check_against_pool, plan_counts
from fairskin.config import ClassifierConfig, FairSkinConfig, VariantSpec

MODES = ("random", "resample", "reweight")
SPACES_DIR = Path(__file__).resolve().parents[2] / "tune_spaces"
COUNT_TARGETS = ("per_subclass", "balance_to")
Subclass = tuple[str, str]


class SpaceError(ValueError):
    """A search space that is malformed, or that its pools cannot serve: the message names the parameter."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a bound of inf / nan is refused


class Objective(_Model):
    """One objective: a metric the trial reports (validation figures only) and its direction."""

    metric: str
    mode: Literal["max", "min"] = "max"

    @field_validator("metric")
    @classmethod
    def _not_test(cls, value: str) -> str:
        if value.startswith("test_"):
            raise ValueError(
                f"objective {value!r}: objectives are validation figures (val_*); test figures never steer a search"
            )
        return value


class Scheduler(_Model):
    """``fifo`` (run every trial to the end) or ``asha`` (early stopping over epochs; one objective)."""

    kind: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class Seeds(_Model):
    """``search``: the sampler's seed. ``train``: classifier seeds (a grid axis in grid spaces)."""

    search: int = Field(0, ge=0)
    train: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("train", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value


class Parameter(_Model):
    """One searched parameter (see the module docstring for ``name`` targets)."""

    name: str
    kind: Literal["simplex", "int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    values: list[Any] | Literal["all"] | None = None
    total: int | None = Field(None, ge=1)  # simplex: M in paper units

    @model_validator(mode="after")
    def _check(self) -> Parameter:
        n = self.name
        if (
            n not in ("proportions", "mode", "variant", *COUNT_TARGETS)
            and not n.startswith("classifier.")
            and not is_generator_parameter(n)
        ):
            raise ValueError(
                f"parameter {n!r}: unknown target; use proportions, per_subclass, balance_to, mode, "
                "variant or classifier.<field> (classifier studies), or diffusion.<field> / "
                f"variant.<field> with a field of {list(GENERATOR_FIELDS)} (generator studies)"
            )
        if is_generator_parameter(n) and self.kind == "simplex":
            raise ValueError(f"parameter {n!r}: kind must be int, float or choice")
        if n.startswith("classifier."):
            fld = n.split(".", 1)[1]
            if fld not in ClassifierConfig.model_fields or fld == "downstream_mode":
                raise ValueError(
                    f"parameter {n!r}: {fld!r} is not a searchable classifier field "
                    "(use `mode` for the downstream mode)"
                )
        expected = {
            "proportions": "simplex",
            "mode": "choice",
            "variant": "choice",
            "per_subclass": "int",
            "balance_to": "int",
        }.get(n)
        if expected and self.kind != expected:
            raise ValueError(f"parameter {n!r}: kind must be {expected!r}, got {self.kind!r}")
        if self.kind == "choice":
            if not self.values:
                raise ValueError(f"parameter {n!r}: a choice needs a non-empty `values` list")
            if self.values == "all" and n != "variant":
                raise ValueError(f"parameter {n!r}: `values: all` is only for `variant`")
            if n == "mode":
                bad = [v for v in self.values if v not in MODES]
                if bad:
                    raise ValueError(f"parameter 'mode': unknown downstream mode(s) {bad}; choose from {list(MODES)}")
            return self
        if self.kind == "simplex":
            if self.total is None:
                raise ValueError(f"parameter {n!r}: a simplex needs `total` (images, paper units)")
            low = 0.0 if self.low is None else self.low
            high = 1.0 if self.high is None else self.high
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(
                    f"parameter {n!r}: bounds must satisfy 0 <= low <= high <= 1, got low={low}, high={high}"
                )
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"parameter {n!r}: kind {self.kind!r} needs `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"parameter {n!r}: low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"parameter {n!r}: a log range needs low > 0, got {self.low}")
        if n in COUNT_TARGETS and self.low < 0:
            raise ValueError(f"parameter {n!r}: image counts are >= 0, got low={self.low}")
        return self


class Fixed(_Model):
    """Trial settings that are not searched. ``plan``: AugmentPlan fields, counts in paper units.
    ``generator`` (generator studies): VariantSpec settings every trial shares, e.g. ``{loss: cbdm}``."""

    mode: Literal["random", "resample", "reweight"] | None = None
    variant: str | None = None
    plan: dict[str, Any] | None = None
    generator: dict[str, Any] | None = None


# Generator studies: the VariantSpec fields a trial may set (``diffusion.<field>`` or ``variant.<field>``).
GENERATOR_FIELDS = ("weights", "apply", "loss", "cbdm_tau", "cbdm_gamma", "learning_rate", "max_steps")


def is_generator_parameter(name: str) -> bool:
    prefix, _, fld = name.partition(".")
    return prefix in ("diffusion", "variant") and fld in GENERATOR_FIELDS


def generator_field(name: str) -> str:
    """``diffusion.cbdm_tau`` / ``variant.weights`` -> the VariantSpec field (``cbdm_tau``, ``weights``)."""
    return name.partition(".")[2]


class SearchSpace(_Model):
    """One search space as written in ``tune_spaces/NAME.yaml`` (paper units)."""

    name: str
    description: str = ""
    # What a trial trains: the downstream classifier on a pool (default), or a generator (a fine-tune
    # from the shared base with the trial's VariantSpec settings, scored on a small pool; issue 17).
    trainable: Literal["classifier", "generator"] = "classifier"
    search: Literal["tpe", "random", "grid"] = "tpe"
    trials: int = Field(20, ge=1)
    startup_trials: int | None = Field(None, ge=1)  # TPE: random trials before the model is used
    objectives: list[Objective] = Field(min_length=1)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    seeds: Seeds = Field(default_factory=Seeds)
    fixed: Fixed = Field(default_factory=Fixed)
    parameters: list[Parameter] = Field(default_factory=list)
    # Per preset, parameters that replace the ones of the same name (e.g. fine-tune steps that fit the
    # smoke preset's tiny runs): {preset: [parameter, ...]}.
    preset_parameters: dict[str, list[Parameter]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        # Study folders (<runs root>/tune/<study>) are named after the space: one safe path component.
        from fairskin.names import name_problem

        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        names = [p.name for p in self.parameters]
        if self.trainable == "generator":
            return self._check_generator(names)
        bad = [n for n in names if is_generator_parameter(n)]
        if bad:
            raise ValueError(f"parameter(s) {bad} set the generator: add `trainable: generator` to the space")
        if self.fixed.generator is not None:
            raise ValueError("fixed.generator is for generator studies (`trainable: generator`)")
        for o in self.objectives:
            if not o.metric.startswith("val_"):
                raise ValueError(
                    f"objective {o.metric!r}: objectives are validation figures (val_*); "
                    "test figures never steer a search"
                )
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"parameter(s) {dup} appear more than once")
        plan_params = [n for n in names if n in ("proportions", *COUNT_TARGETS)]
        if len(plan_params) > 1:
            raise ValueError(f"parameters {plan_params} each define the augmentation plan: keep one")
        if plan_params and self.fixed.plan is not None:
            raise ValueError(f"parameter {plan_params[0]!r} and fixed.plan both define the augmentation plan")
        if self.fixed.plan is not None:
            try:
                AugmentPlan(**self.fixed.plan)
            except ValidationError as exc:
                raise ValueError(f"fixed.plan: {exc.errors()[0]['msg']}") from None
        modes = self.modes()
        if "proportions" in names and "resample" in modes:
            raise ValueError(
                "parameter 'proportions': downstream mode 'resample' re-draws the proportions each "
                "epoch and would overwrite the searched ones; fix mode to random or reweight"
            )
        if "mode" in names and self.fixed.mode is not None:
            raise ValueError("parameter 'mode' is searched and fixed.mode is set: keep one")
        if "variant" in names and self.fixed.variant is not None:
            raise ValueError("parameter 'variant' is searched and fixed.variant is set: keep one")
        if self.scheduler.kind == "asha" and len(self.objectives) > 1:
            raise ValueError(
                f"scheduler 'asha' stops trials on one metric; this space has "
                f"{len(self.objectives)} objectives ({[o.metric for o in self.objectives]})"
            )
        if self.search == "grid":
            bad = [p.name for p in self.parameters if p.kind != "choice"]
            if bad:
                raise ValueError(f"parameter(s) {bad}: a grid search takes choice parameters only")
        else:
            if not self.parameters:
                raise ValueError(f"search {self.search!r} needs at least one parameter")
            if len(self.seeds.train) > 1:
                raise ValueError(
                    f"seeds.train = {self.seeds.train}: a {self.search} search trains one seed per "
                    "trial; repeats over seeds are for grid spaces"
                )
        return self

    def _check_generator(self, names: list[str]) -> SearchSpace:
        dup = sorted({n for n in names if names.count(n) > 1})
        fields = [generator_field(n) for n in names if is_generator_parameter(n)]
        if dup or len(set(fields)) != len(fields):
            raise ValueError(
                f"parameter(s) {dup or fields} appear more than once (diffusion.X and variant.X set the same field)"
            )
        bad = [n for n in names if not is_generator_parameter(n)]
        if bad:
            raise ValueError(
                f"parameter(s) {bad}: a generator study searches diffusion.<field> / variant.<field> "
                f"with a field of {list(GENERATOR_FIELDS)}"
            )
        if self.fixed.mode or self.fixed.variant or self.fixed.plan:
            raise ValueError("a generator study takes fixed.generator only (no mode, variant or plan)")
        unknown = sorted(set(self.fixed.generator or {}) - set(GENERATOR_FIELDS))
        if unknown:
            raise ValueError(f"fixed.generator: unknown field(s) {unknown}; use {list(GENERATOR_FIELDS)}")
        both = sorted(set(self.fixed.generator or {}) & set(fields))
        if both:
            raise ValueError(f"fixed.generator sets {both}, which the space also searches: keep one")
        if self.scheduler.kind == "asha" and len(self.objectives) > 1:
            raise ValueError(
                f"scheduler 'asha' stops trials on one metric; this space has "
                f"{len(self.objectives)} objectives ({[o.metric for o in self.objectives]})"
            )
        if self.search == "grid":
            bad = [p.name for p in self.parameters if p.kind != "choice"]
            if bad:
                raise ValueError(f"parameter(s) {bad}: a grid search takes choice parameters only")
        elif not self.parameters:
            raise ValueError(f"search {self.search!r} needs at least one parameter")
        if len(self.seeds.train) > 1:
            raise ValueError("seeds.train: a generator study fine-tunes with diffusion.repeat_seeds[0]; one seed only")
        return self

    def for_preset(self, preset: str) -> SearchSpace:
        """This space with ``preset_parameters[preset]`` replacing the parameters of the same name."""
        extra = self.preset_parameters.get(preset)
        if not extra:
            return self
        names = {p.name for p in self.parameters}
        unknown = [p.name for p in extra if p.name not in names]
        if unknown:
            raise SpaceError(f"preset_parameters.{preset}: {unknown} are not parameters of the space")
        by_name = {p.name: p for p in extra}
        return self.model_copy(update={"parameters": [by_name.get(p.name, p) for p in self.parameters]})

    def modes(self) -> list[str]:
        """The downstream modes trials can use (searched, fixed, or the config's default)."""
        for p in self.parameters:
            if p.name == "mode":
                return list(p.values)  # type: ignore[arg-type]
        return [self.fixed.mode] if self.fixed.mode else []

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


# --------------------------------------------------------------------------- loading


def space_path(name: str | Path) -> Path:
    """``NAME`` -> ``tune_spaces/NAME.yaml`` (or ``$FAIRSKIN_TUNE_SPACES/NAME.yaml``); a path is kept."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    root = Path(os.environ.get("FAIRSKIN_TUNE_SPACES", SPACES_DIR))
    return root / f"{name}.yaml"


def available_spaces() -> list[str]:
    root = Path(os.environ.get("FAIRSKIN_TUNE_SPACES", SPACES_DIR))
    return sorted(p.stem for p in root.glob("*.yaml"))


def parse_space(data: Mapping[str, Any], origin: str = "space") -> SearchSpace:
    """Validate a space given as a mapping; errors name the field."""
    try:
        return SearchSpace.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"invalid search space ({origin}):"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {msg}" if where else f"  {msg}")
        raise SpaceError("\n".join(lines)) from None


def load_space(name: str | Path) -> SearchSpace:
    """Read and validate ``tune_spaces/NAME.yaml`` (or a YAML path)."""
    path = space_path(name)
    if not path.exists():
        raise SpaceError(f"no search space {str(name)!r} ({path} does not exist); available: {available_spaces()}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping at the top level")
    data.setdefault("name", path.stem)
    return parse_space(data, str(path))


# --------------------------------------------------------------------------- resolving


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


def _group_capacity(
    pools: Mapping[str, Mapping[Subclass, int]], groups: Sequence[str], diseases: Sequence[str]
) -> dict[str, int]:
    """Images a group can give to a group_proportions plan: n_diseases x its smallest subclass pool (min over pools)."""
    return {g: len(diseases) * min(pool.get((g, d), 0) for pool in pools.values() for d in diseases) for g in groups}


def _largest_total(caps: Mapping[str, int], high: float, lows: Sequence[float], total: int) -> int:
    """The largest M <= total a bounded simplex can place in the pools (0 if none)."""
    for m in range(total, 0, -1):
        uppers = [min(high, caps[g] / m) for g in caps]
        if sum(uppers) >= 1.0 and all(u >= lo for u, lo in zip(uppers, lows)):
            return m
    return 0


def resolve_space(
    space: SearchSpace,
    config: FairSkinConfig,
    pools: Mapping[str, Mapping[Subclass, int]],
    train_counts: Mapping[Subclass, int],
    *,
    variant: str | None = None,
    trials: int | None = None,
) -> ResolvedSpace:
    """Scale the space to ``config`` and check it against every pool it can draw from.

    ``pools``: variant -> images per (group, disease) in its pool. ``train_counts``: real
    training images per subclass (for ``balance_to``). Raises :class:`SpaceError` naming the
    parameter and its largest valid value when a pool cannot serve the space.
    """
    if space.trainable == "generator":  # no pools: values checked through the typed config
        return resolve_generator_space(space, config, trials=trials)
    scale = config.tune.count_scale
    groups, diseases = tuple(config.data.group_names), tuple(config.data.diseases)
    check_classifier_values(space, config.classifier)
    if not pools:
        raise SpaceError("no pools given: pass a pool shard folder per variant (--pool VARIANT=PATH)")

    # Which variants (pools) the study draws from.
    vparam = space.parameter("variant")
    if vparam is not None:
        if variant is not None:
            raise SpaceError(f"space {space.name!r} searches `variant`; --variant {variant} would fix it")
        wanted = list(pools) if vparam.values == "all" else list(vparam.values)  # type: ignore[arg-type]
    else:
        chosen = variant or space.fixed.variant or (next(iter(pools)) if len(pools) == 1 else None)
        if chosen is None:
            raise SpaceError(
                f"space {space.name!r} does not search `variant` and {len(pools)} pools were given "
                f"({sorted(pools)}): pass --variant"
            )
        wanted = [chosen]
    missing = [v for v in wanted if v not in pools]
    if missing:
        raise SpaceError(f"parameter 'variant': no pool for {missing}; pools were given for {sorted(pools)}")
    used = {v: pools[v] for v in wanted}
    for v, pool in used.items():
        absent = [s for s in ((g, d) for g in groups for d in diseases) if pool.get(s, 0) == 0]
        if len(absent) == len(groups) * len(diseases):
            raise SpaceError(f"pool of variant {v!r} holds no image of the configured groups/diseases")

    dims: list[Dim] = []
    for p in space.parameters:
        if p.kind == "choice":
            values = tuple(wanted) if p.name == "variant" else tuple(p.values)  # type: ignore[arg-type]
            dims.append(Dim(p.name, "choice", values=values))
        elif p.kind == "simplex":
            dims.append(_resolve_simplex(p, scale, used, groups, diseases))
        elif p.name in COUNT_TARGETS:
            dims.append(_resolve_count(p, scale, used, train_counts, groups, diseases))
        else:
            step = p.step
            if p.kind == "int":
                step = int(step or 1)
            dims.append(Dim(p.name, p.kind, low=p.low, high=p.high, step=step, log=p.log))

    fixed_plan = None
    if space.fixed.plan is not None:
        raw = dict(space.fixed.plan)
        for key in ("balance_to", "per_subclass", "total"):
            if raw.get(key) is not None:
                raw[key] = scale_count(raw[key], scale)
        fixed_plan = AugmentPlan(**raw)
        for v, pool in used.items():
            try:
                check_against_pool(
                    fixed_plan, plan_counts(fixed_plan, train_counts, groups, diseases), pool, diseases, train_counts
                )
            except PlanError as exc:
                raise SpaceError(
                    f"fixed.plan (counts scaled by tune.count_scale={scale}), pool of {v!r}: {exc}"
                ) from None

    fixed: dict[str, Any] = {}
    if space.parameter("mode") is None:
        fixed["mode"] = space.fixed.mode or config.classifier.downstream_mode
        if fixed["mode"] == "resample" and space.parameter("proportions") is not None:
            raise SpaceError(
                "parameter 'proportions': classifier.downstream_mode is 'resample', which would "
                "overwrite the searched proportions; fix the space's mode to random or reweight"
            )
    if vparam is None:
        fixed["variant"] = wanted[0]
    if space.search != "grid" or len(space.seeds.train) == 1:
        fixed["seed"] = space.seeds.train[0]
    n_trials = trials or space.trials
    if space.search == "grid":
        n_trials = 1  # Tune's num_samples: one pass over the grid
    return ResolvedSpace(
        name=space.name,
        search=space.search,
        trials=n_trials,
        startup_trials=space.startup_trials,
        metrics=tuple(o.metric for o in space.objectives),
        modes=tuple(o.mode for o in space.objectives),
        scheduler=space.scheduler,
        search_seed=space.seeds.search,
        train_seeds=tuple(space.seeds.train),
        dims=tuple(dims),
        fixed=fixed,
        fixed_plan=fixed_plan,
        variants=tuple(wanted),
        count_scale=scale,
    )


def variant_from_trial(
    trial_config: Mapping[str, Any], name: str, fixed: Mapping[str, Any] | None = None
) -> VariantSpec:
    """A generator trial's settings as a ``diffusion.custom_variants`` entry (validated): the fixed
    settings, then each ``diffusion.<field>`` / ``variant.<field>`` of the trial config. Put the
    result's ``model_dump(exclude_none=True)`` under ``diffusion.custom_variants`` (and its name in
    ``diffusion.variants``) to take the trial's generator into the ablation."""
    values: dict[str, Any] = dict(fixed or {})
    for key, value in trial_config.items():
        if is_generator_parameter(key):
            values[generator_field(key)] = value
    if "max_steps" in values:
        values["max_steps"] = int(values["max_steps"])
    return VariantSpec(name=name, **values)


def _value_error(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" if e["loc"] else e["msg"]
        for e in exc.errors()
    )


def check_generator_values(space: SearchSpace, config: FairSkinConfig) -> None:
    """Every value a generator parameter can take (``low``, ``high``, each choice), with the fixed
    settings, must make a valid :class:`VariantSpec` and, applied with ``DiffusionConfig.for_variant``,
    a valid :class:`DiffusionConfig`: :class:`SpaceError` naming the parameter before Ray starts."""
    from fairskin.config import DiffusionConfig

    fixed = dict(space.fixed.generator or {})
    try:
        VariantSpec(name="fixed", **fixed)
    except ValidationError as exc:
        raise SpaceError(f"fixed.generator: {_value_error(exc)}") from None
    for p in space.parameters:
        values = (
            list(p.values)
            if p.kind == "choice"
            # type: ignore[arg-type]
            else ([int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high])
        )
        for value in values:
            try:
                spec = variant_from_trial({p.name: value}, "check", fixed)
                DiffusionConfig.model_validate(config.diffusion.for_variant(spec).model_dump())
            except ValidationError as exc:
                raise SpaceError(
                    f"parameter {p.name!r}: value {value!r} is not a valid {p.name}: {_value_error(exc)}"
                ) from None
            except (TypeError, ValueError) as exc:
                raise SpaceError(f"parameter {p.name!r}: value {value!r} is not a valid {p.name}: {exc}") from None


def resolve_generator_space(space: SearchSpace, config: FairSkinConfig, *, trials: int | None = None) -> ResolvedSpace:
    """A generator study's space for ``config``: values checked through the typed config (no pools)."""
    if space.trainable != "generator":
        raise SpaceError(f"space {space.name!r} trains the classifier; it needs pools (resolve_space)")
    space = space.for_preset(config.preset)
    check_generator_values(space, config)
    dims = []
    for p in space.parameters:
        if p.kind == "choice":
            dims.append(Dim(p.name, "choice", values=tuple(p.values)))  # type: ignore[arg-type]
        else:
            step = int(p.step or 1) if p.kind == "int" else p.step
            dims.append(Dim(p.name, p.kind, low=p.low, high=p.high, step=step, log=p.log))
    n_trials = 1 if space.search == "grid" else (trials or space.trials)
    return ResolvedSpace(
        name=space.name,
        search=space.search,
        trials=n_trials,
        startup_trials=space.startup_trials,
        metrics=tuple(o.metric for o in space.objectives),
        modes=tuple(o.mode for o in space.objectives),
        scheduler=space.scheduler,
        search_seed=space.seeds.search,
        train_seeds=tuple(space.seeds.train),
        dims=tuple(dims),
        fixed={"seed": space.seeds.train[0]},
        variants=(),
        count_scale=config.tune.count_scale,
        trainable="generator",
        fixed_generator=dict(space.fixed.generator or {}),
    )


def check_classifier_values(space: SearchSpace, classifier: ClassifierConfig) -> None:
    """Every value a ``classifier.<field>`` parameter can take (``low``, ``high``, each choice) must make a
    valid :class:`ClassifierConfig` (trials apply them with ``model_copy``, which does not validate):
    :class:`SpaceError` naming the parameter, the value and the rule, before Ray starts."""
    base = classifier.model_dump()
    for p in space.parameters:
        if not p.name.startswith("classifier."):
            continue
        field_name = p.name.split(".", 1)[1]
        if p.kind == "choice":
            values = list(p.values)  # type: ignore[arg-type]
        elif p.kind == "int":
            values = [int(p.low), int(p.high)]  # type: ignore[arg-type]  # what suggest_int draws between
        else:
            values = [p.low, p.high]
        for value in values:
            try:
                ClassifierConfig.model_validate({**base, field_name: value})
            except ValidationError as exc:
                msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise SpaceError(f"parameter {p.name!r}: value {value!r} is not a valid {p.name}: {msg}") from None


def _resolve_simplex(
    p: Parameter,
    scale: float,
    pools: Mapping[str, Mapping[Subclass, int]],
    groups: Sequence[str],
    diseases: Sequence[str],
) -> Dim:
    total = scale_count(p.total, scale)  # type: ignore[arg-type]
    low = 0.0 if p.low is None else p.low
    high = 1.0 if p.high is None else p.high
    if len(groups) * low > 1.0 + 1e-12 or len(groups) * high < 1.0 - 1e-12:
        raise SpaceError(
            f"parameter {p.name!r}: no proportions over {len(groups)} groups sum to 1 within [{low}, {high}]"
        )
    caps = _group_capacity(pools, groups, diseases)
    # p_g * M <= cap_g guarantees ceil(p_g * M) <= cap_g, hence no subclass asks more than its pool.
    highs = [min(high, caps[g] / total * (1 - 1e-9)) for g in groups]
    lows = [low] * len(groups)
    short = [g for g, h in zip(groups, highs) if h < low]
    if sum(highs) < 1.0 or short:
        largest = _largest_total(caps, high, lows, total)
        held = ", ".join(f"{g} {caps[g]}" for g in groups)
        raise SpaceError(
            f"parameter {p.name!r}: total {p.total} (scaled to {total} by tune.count_scale={scale}) cannot be "
            f"placed within [{low}, {high}] per group: the pools hold at most {held} images per group "
            f"(n_diseases x smallest subclass pool). The largest valid total is "
            f"{math.floor(largest / scale + 1e-9)} (scaled {largest}); or generate a larger pool"
        )
    return Dim(p.name, "simplex", total=total, groups=tuple(groups), lows=tuple(lows), highs=tuple(highs))


def _resolve_count(
    p: Parameter,
    scale: float,
    pools: Mapping[str, Mapping[Subclass, int]],
    train_counts: Mapping[Subclass, int],
    groups: Sequence[str],
    diseases: Sequence[str],
) -> Dim:
    low, high = scale_count(p.low, scale), scale_count(p.high, scale)  # type: ignore[arg-type]
    step = max(1, int(round((p.step or 1) * scale))) if p.step else 1
    subclasses = [(g, d) for g in groups for d in diseases]
    if p.name == "per_subclass":
        largest = min(pool.get(s, 0) for pool in pools.values() for s in subclasses)
    else:  # balance_to T asks T - N_rd of each subclass
        largest = min(pool.get(s, 0) + int(train_counts.get(s, 0)) for pool in pools.values() for s in subclasses)
    if high > largest:
        raise SpaceError(
            f"parameter {p.name!r}: high {p.high:g} (scaled to {high} by tune.count_scale={scale}) asks more than "
            f"the pools hold; the largest valid value is {math.floor(largest / scale + 1e-9)} (scaled {largest})"
        )
    # Keep the grid of values on the scaled step, ending at or below high.
    high = low + (high - low) // step * step
    return Dim(p.name, "int", low=low, high=high, step=step)


# --------------------------------------------------------------------------- sampling


_SIMPLEX_MAX_GROUPS = 10  # the CDF sums over 2^(K-1) subsets
_SIMPLEX_TOL = 1e-12  # round-off allowed in the bounds; narrower intervals are points


def sample_simplex(u: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> list[float]:
    """K-1 uniforms in [0, 1] -> a point of {p : lows <= p <= highs, sum p = 1}, K = len(lows) <= 10.

    Uniform u (i.i.d. U[0, 1]) give the uniform distribution on that bounded simplex: p_i
    (i < K-1) is the inverse of its conditional CDF given p_1..p_{i-1} at u_i, the last group
    takes the remainder. The map is deterministic and p_i does not decrease when u_i grows
    (the others fixed). Groups with low == high are fixed there (their u is unused). Raises
    ValueError for K > 10 or infeasible bounds (some low > high, sum(lows) > 1, sum(highs) < 1).
    """
    k = len(lows)
    if len(highs) != k:
        raise ValueError(f"simplex bounds: {k} lows but {len(highs)} highs")
    if k > _SIMPLEX_MAX_GROUPS:
        raise ValueError(f"simplex of {k} groups: the exact sampler handles at most {_SIMPLEX_MAX_GROUPS}")
    bad = [i for i in range(k) if lows[i] > highs[i]]
    if bad:
        raise ValueError(f"simplex bounds: low > high for group(s) {bad}")
    if sum(lows) > 1 + _SIMPLEX_TOL:
        raise ValueError(f"simplex bounds: the lows sum to {sum(lows):.12g} > 1")
    if sum(highs) < 1 - _SIMPLEX_TOL:
        raise ValueError(f"simplex bounds: the highs sum to {sum(highs):.12g} < 1")
    if len(u) != k - 1:
        raise ValueError(f"need {k - 1} uniforms for {k} groups, got {len(u)}")
    if not all(math.isfinite(x) for x in u):
        raise ValueError(f"uniforms must be finite, got {list(u)}")
    # Shift to y = p - low in the box [0, c], sum y = t; intervals narrower than the tolerance are points.
    c = [hi - lo if hi - lo > _SIMPLEX_TOL else 0.0 for lo, hi in zip(lows, highs)]
    t = min(max(1.0 - sum(lows), 0.0), sum(c))
    free = [i for i in range(k) if c[i] > 0]
    y = [0.0] * k
    for n, i in enumerate(free[:-1]):
        y[i] = _conditional_inverse(min(max(u[i], 0.0), 1.0), t, [c[j] for j in free[n:]])
        t -= y[i]
    if free:
        y[free[-1]] = t
    return [min(hi, max(lo, lo + yi)) for lo, hi, yi in zip(lows, highs, y)]


def _conditional_inverse(u: float, t: float, c: Sequence[float]) -> float:
    """The u-quantile of y_0 when y is uniform on {0 <= y_j <= c_j, sum y = t} (all c_j > 0).

    By inclusion-exclusion, the (m-1)-volume of {0 <= z_j <= d_j (j < m), sum z = s} is
    sum over subsets S of (-1)^|S| (s - d_S)_+^(m-1) / (m-1)!, with d_S = sum_{j in S} d_j.
    The density of y_0 at v is that volume for the m = len(c) - 1 other coordinates at
    s = t - v, so its CDF on the feasible interval [a, b] is, up to a constant factor,
    G(a) - G(v) with G(v) = sum_S (-1)^|S| (t - c_S - v)_+^m over subsets S of c[1:];
    G decreases; we invert it by Newton steps safeguarded by bisection.
    """
    rest = c[1:]
    a, b = max(0.0, t - sum(rest)), min(c[0], t)
    if b - a <= _SIMPLEX_TOL:
        return min(max(a, 0.0), c[0])
    if len(rest) == 1:  # one coordinate left: y_0 is uniform on its feasible interval
        return a + u * (b - a)
    if 2 * t > sum(c):  # reflect y -> c - y (sum c - t < t): fewer, smaller terms, less cancellation
        return c[0] - _conditional_inverse(1.0 - u, sum(c) - t, c)
    m, terms = len(rest), [(1.0, t)]  # (sign, t - c_S) over subsets S of rest
    for cj in rest:
        terms += [(-sign, x - cj) for sign, x in terms]
    terms = [(sign, x) for sign, x in terms if x > a]  # the others vanish on [a, b]

    def g(v: float) -> tuple[float, float]:  # G(v) and G'(v)
        value = slope = 0.0
        for sign, x in terms:
            d = max(x - v, 0.0)
            value += sign * d**m
            slope -= sign * m * d ** (m - 1)
        return value, slope

    g_a, g_b = g(a)[0], g(b)[0]
    target = g_a - u * (g_a - g_b)
    lo, hi, v = a, b, a + u * (b - a)
    for _ in range(200):  # Newton steps, bisection when a step leaves the bracket [lo, hi] of the root
        value, slope = g(v)
        if value == target:
            return v
        lo, hi = (v, hi) if value > target else (lo, v)
        step = v - (value - target) / slope if slope < 0 else lo
        new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(new - v) <= 1e-13 or hi - lo <= 1e-13:
            return new
        v = new
    return v


class DefineByRun:
    """Optuna define-by-run function for a resolved space (picklable: Tune saves the searcher)."""

    def __init__(self, space: ResolvedSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.space.dims:
            if d.kind == "simplex":
                u = [trial.suggest_float(f"{d.name}_u{i}", 0.0, 1.0) for i in range(len(d.groups) - 1)]
                out[d.name] = dict(zip(d.groups, sample_simplex(u, d.lows, d.highs)))
            elif d.kind == "choice":
                out[d.name] = trial.suggest_categorical(d.name, list(d.values))
            elif d.kind == "int":
                out[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
            else:
                out[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
        return out


def pipeline_space(config):
    """The space the ``tune`` stage runs (``tune.space``, default ``ablation``), with
    ``tune.train_seeds`` (when set) replacing its training seeds by 0 .. N-1."""
    space = load_space(config.tune.space)
    if config.tune.train_seeds is not None:
        seeds = space.seeds.model_copy(update={"train": list(range(config.tune.train_seeds))})
        space = space.model_copy(update={"seeds": seeds})
    return space
