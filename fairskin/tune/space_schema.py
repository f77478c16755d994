"""What a search space file (``tune_spaces/NAME.yaml``) may say: the pydantic schema of a space, validated.

:class:`SearchSpace` and its parts (objectives, scheduler, seeds, parameters, fixed settings) check a space
on its own, before any preset or pool is known; :mod:`fairskin.tune.spaces` loads, scales and resolves it
(see its docstring for the parameter *targets* and their units). :class:`SpaceError` is the error of both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fairskin.classify.augment import AugmentPlan
from fairskin.config import ClassifierConfig

MODES = ("random", "resample", "reweight")
COUNT_TARGETS = ("per_subclass", "balance_to")


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
    """One searched parameter (see :mod:`fairskin.tune.spaces` for the ``name`` targets)."""

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
                f"variant.<field> with a field of {list(GENERATOR_FIELDS[:-1])} or hook.<hook>.<setting> "
                "(generator studies)"
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


# Generator studies: the VariantSpec fields a trial may set (``diffusion.<field>`` or ``variant.<field>``), and
# a method hook's settings (``hook.<hook>.<setting>``, e.g. ``hook.lora.rank``; the hook's own Settings check them).
GENERATOR_FIELDS = ("weights", "apply", "loss", "cbdm_tau", "cbdm_gamma", "learning_rate", "max_steps", "hooks")


def is_hook_parameter(name: str) -> bool:
    """``hook.<hook>.<setting>``: a method hook's setting (``hook.lora.rank``)."""
    parts = name.split(".")
    return len(parts) == 3 and parts[0] == "hook" and all(parts[1:])


def is_generator_parameter(name: str) -> bool:
    prefix, _, fld = name.partition(".")
    return (prefix in ("diffusion", "variant") and fld in GENERATOR_FIELDS and fld != "hooks") or is_hook_parameter(
        name
    )


def generator_field(name: str) -> str:
    """``diffusion.cbdm_tau`` / ``variant.weights`` -> the VariantSpec field (``cbdm_tau``, ``weights``);
    ``hook.lora.rank`` -> ``hook.lora.rank`` (a setting inside ``VariantSpec.hooks``)."""
    return name if is_hook_parameter(name) else name.partition(".")[2]


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
                f"with a field of {list(GENERATOR_FIELDS[:-1])}, or hook.<hook>.<setting>"
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
