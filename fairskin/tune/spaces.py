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

This module loads and resolves spaces; the schema of a space file is :mod:`fairskin.tune.space_schema`,
a resolved space :mod:`fairskin.tune.resolved`, the simplex sampler :mod:`fairskin.tune.simplex` (their
public names are re-exported here).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fairskin.classify.augment import AugmentPlan, PlanError, check_against_pool, plan_counts
from fairskin.config import ClassifierConfig, FairSkinConfig, VariantSpec

# The resolved space's names stay importable from here (re-exported).
from fairskin.tune.resolved import Dim as Dim
from fairskin.tune.resolved import ResolvedSpace as ResolvedSpace
from fairskin.tune.resolved import scale_count as scale_count
from fairskin.tune.simplex import sample_simplex as sample_simplex  # re-exported (tests, benchmarks)

# The schema's names stay importable from here (re-exported).
from fairskin.tune.space_schema import COUNT_TARGETS as COUNT_TARGETS
from fairskin.tune.space_schema import GENERATOR_FIELDS as GENERATOR_FIELDS
from fairskin.tune.space_schema import MODES as MODES
from fairskin.tune.space_schema import Fixed as Fixed
from fairskin.tune.space_schema import Objective as Objective
from fairskin.tune.space_schema import Parameter as Parameter
from fairskin.tune.space_schema import Scheduler as Scheduler
from fairskin.tune.space_schema import SearchSpace as SearchSpace
from fairskin.tune.space_schema import Seeds as Seeds
from fairskin.tune.space_schema import SpaceError as SpaceError
from fairskin.tune.space_schema import generator_field as generator_field
from fairskin.tune.space_schema import is_generator_parameter as is_generator_parameter

SPACES_DIR = Path(__file__).resolve().parents[2] / "tune_spaces"
Subclass = tuple[str, str]


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
    wanted = _wanted_variants(space, pools, variant)
    used = _used_pools(wanted, pools, groups, diseases)
    dims = _classifier_dims(space, wanted, scale, used, train_counts, groups, diseases)
    fixed_plan = _fixed_plan(space, scale, used, train_counts, groups, diseases)
    fixed = _fixed_settings(space, config, wanted)
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


def _wanted_variants(space: SearchSpace, pools: Mapping[str, Mapping[Subclass, int]], variant: str | None) -> list[str]:
    """Which variants (pools) the study draws from: the searched ``variant`` values, else one variant."""
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
    return wanted


def _used_pools(
    wanted: Sequence[str],
    pools: Mapping[str, Mapping[Subclass, int]],
    groups: Sequence[str],
    diseases: Sequence[str],
) -> dict[str, Mapping[Subclass, int]]:
    """The pools of the ``wanted`` variants; each must exist and hold an image of the configured subclasses."""
    missing = [v for v in wanted if v not in pools]
    if missing:
        raise SpaceError(f"parameter 'variant': no pool for {missing}; pools were given for {sorted(pools)}")
    used = {v: pools[v] for v in wanted}
    for v, pool in used.items():
        absent = [s for s in ((g, d) for g in groups for d in diseases) if pool.get(s, 0) == 0]
        if len(absent) == len(groups) * len(diseases):
            raise SpaceError(f"pool of variant {v!r} holds no image of the configured groups/diseases")
    return used


def _classifier_dims(
    space: SearchSpace,
    wanted: Sequence[str],
    scale: float,
    used: Mapping[str, Mapping[Subclass, int]],
    train_counts: Mapping[Subclass, int],
    groups: Sequence[str],
    diseases: Sequence[str],
) -> list[Dim]:
    """A classifier space's dimensions: counts scaled, simplex and count bounds checked against the pools."""
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
    return dims


def _fixed_plan(
    space: SearchSpace,
    scale: float,
    used: Mapping[str, Mapping[Subclass, int]],
    train_counts: Mapping[Subclass, int],
    groups: Sequence[str],
    diseases: Sequence[str],
) -> AugmentPlan | None:
    """``fixed.plan`` with its counts scaled, checked against every pool used (None without one)."""
    if space.fixed.plan is None:
        return None
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
            raise SpaceError(f"fixed.plan (counts scaled by tune.count_scale={scale}), pool of {v!r}: {exc}") from None
    return fixed_plan


def _fixed_settings(space: SearchSpace, config: FairSkinConfig, wanted: Sequence[str]) -> dict[str, Any]:
    """The mode, variant and seed every trial gets when the space does not search them."""
    fixed: dict[str, Any] = {}
    if space.parameter("mode") is None:
        fixed["mode"] = space.fixed.mode or config.classifier.downstream_mode
        if fixed["mode"] == "resample" and space.parameter("proportions") is not None:
            raise SpaceError(
                "parameter 'proportions': classifier.downstream_mode is 'resample', which would "
                "overwrite the searched proportions; fix the space's mode to random or reweight"
            )
    if space.parameter("variant") is None:
        fixed["variant"] = wanted[0]
    if space.search != "grid" or len(space.seeds.train) == 1:
        fixed["seed"] = space.seeds.train[0]
    return fixed


def variant_from_trial(
    trial_config: Mapping[str, Any], name: str, fixed: Mapping[str, Any] | None = None
) -> VariantSpec:
    """A generator trial's settings as a ``diffusion.custom_variants`` entry (validated): the fixed
    settings, then each ``diffusion.<field>`` / ``variant.<field>`` of the trial config. Put the
    result's ``model_dump(exclude_none=True)`` under ``diffusion.custom_variants`` (and its name in
    ``diffusion.variants``) to take the trial's generator into the ablation."""
    from fairskin.methods import check_hooks
    from fairskin.tune.space_schema import is_hook_parameter

    values: dict[str, Any] = dict(fixed or {})
    hooks = {hook: dict(settings or {}) for hook, settings in (values.pop("hooks", None) or {}).items()}
    for key, value in trial_config.items():
        if is_hook_parameter(key):
            _, hook, setting = key.split(".")
            hooks.setdefault(hook, {})[setting] = value
        elif is_generator_parameter(key):
            values[generator_field(key)] = value
    if "max_steps" in values:
        values["max_steps"] = int(values["max_steps"])
    return check_hooks(VariantSpec(name=name, hooks=hooks, **values))


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
    from fairskin.methods import check_hooks

    fixed = dict(space.fixed.generator or {})
    try:
        check_hooks(VariantSpec(name="fixed", **fixed))
    except ValidationError as exc:
        raise SpaceError(f"fixed.generator: {_value_error(exc)}") from None
    except ValueError as exc:
        raise SpaceError(f"fixed.generator: {exc}") from None
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
