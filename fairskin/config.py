"""Typed configuration: one pydantic model per concern, named presets, YAML load/dump.

Every knob of the engine lives here and is validated in one place. A configuration is built as

    defaults  <-  preset  <-  YAML file  <-  command-line overrides (``key.sub=value``)

and an invalid value fails with a :class:`ConfigError` naming the field, the value and
what is allowed. The named presets are :mod:`fairskin.presets`; merging, overrides and flattening of the
plain tree are :mod:`fairskin.config_tree` (their public names are re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The tree helpers and the error live in fairskin.config_tree (ConfigError, parse_override, flatten re-exported).
from fairskin.config_tree import ConfigError as ConfigError
from fairskin.config_tree import apply_override, deep_merge, format_validation_error
from fairskin.config_tree import flatten as flatten
from fairskin.config_tree import parse_override as parse_override

# Lives beside the samplers, which benchmarks/gpu.py imports on the device machine without pydantic.
from fairskin.diffusion.sampler import NO_ZERO_SNR_SAMPLERS
from fairskin.methods import Method, check_hooks, find_method, method_names

# A variant's schema lives with the methods; the configuration names variants and checks them against the method
# registry, one way (the methods never import the configuration). Re-exported: callers import them from here.
from fairskin.methods.spec import (  # noqa: F401
    CONTROL_DROP_PREFIX,
    CONTROL_MIX_PREFIX,
    VariantSpec,
    group_slug,
    is_mix_control,
    parse_mix_control,
)
from fairskin.metrics.endpoints import (
    DEFAULT_MARGINS,
    DEFAULT_PRIMARY,
    DEFAULT_RESOLUTIONS,
    Declaration,
    config_hash,
    endpoint_problems,
)

# The presets live in fairskin.presets (re-exported).
from fairskin.presets import PRESETS as PRESETS
from fairskin.presets import PresetFn as PresetFn
from fairskin.presets import register_preset as register_preset

DEFAULT_DISEASES = (
    "allergic contact dermatitis",
    "basal cell carcinoma",
    "lichen planus",
    "psoriasis",
    "squamous cell carcinoma",
)


class _Section(BaseModel):
    # allow_inf_nan=False: a float field refuses inf / nan (YAML .inf, .nan, "inf") naming the field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True, allow_inf_nan=False)


class GroupSpec(_Section):
    """A skin-tone group and the Fitzpatrick skin types (1..6) it holds."""

    name: str = Field(min_length=1)
    fst: list[int] = Field(min_length=1)

    @field_validator("fst")
    @classmethod
    def _fst_range(cls, value: list[int]) -> list[int]:
        bad = [v for v in value if not 1 <= v <= 6]
        if bad:
            raise ValueError(f"Fitzpatrick types must be in 1..6, got {bad}")
        return sorted(set(value))


def _default_groups() -> list[GroupSpec]:
    # Order is the group-id order used everywhere (tensors, tables).
    return [
        GroupSpec(name="African", fst=[5, 6]),
        GroupSpec(name="Asian", fst=[3, 4]),
        GroupSpec(name="Caucasian", fst=[1, 2]),
    ]


class DataConfig(_Section):
    """Where images come from, how they are labelled, binned and split."""

    source: Literal["synthetic", "fitzpatrick17k"] = "synthetic"
    csv_path: Path | None = None
    image_root: Path | None = None
    binning: Literal["centaur_fallback", "scale", "centaur"] = "centaur_fallback"
    groups: list[GroupSpec] = Field(default_factory=_default_groups)
    diseases: list[str] = Field(default_factory=lambda: list(DEFAULT_DISEASES), min_length=2)
    min_subclass_count: int = Field(12, ge=1)
    drop_qc_wrongly_labelled: bool = False
    near_duplicate_max_distance: int | None = Field(None, ge=0, le=64)
    on_bad_image: Literal["fail", "skip"] = "fail"
    image_size: int = Field(64, ge=8, le=1024)
    synthetic_scale: float = Field(1.0, gt=0, le=100)
    shard_rows: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        seen: dict[int, str] = {}
        for g in self.groups:
            for f in g.fst:
                if f in seen:
                    raise ValueError(f"FST {f} is in both groups {seen[f]!r} and {g.name!r}")
                seen[f] = g.name
        if len(set(self.diseases)) != len(self.diseases):
            raise ValueError(f"diseases must be unique, got {self.diseases}")
        if self.source == "fitzpatrick17k" and self.csv_path is None:
            raise ValueError("source 'fitzpatrick17k' needs data.csv_path (the Fitzpatrick17k CSV)")
        return self

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group_fst(self) -> dict[str, list[int]]:
        return {g.name: list(g.fst) for g in self.groups}


class DiffusionConfig(_Section):
    """Level 2: the Stable Diffusion fine-tune."""

    model: str = "tiny"  # "tiny" (built in code) or a local folder / hub id of an SD pipeline
    allow_download: bool = False
    prompt_template: str = "{group} people {disease}"
    variants: list[str] = Field(default_factory=lambda: ["vanilla", "fairskin_s"], min_length=1)
    # Variants defined here, beside the registered ones (``fairskin.diffusion.variants``): e.g. the
    # paper's literal reading of level 1, weights in the loss: {name: sqrs_loss, weights: sqrs, apply: loss}.
    custom_variants: list[VariantSpec] = Field(default_factory=list)
    # Generator repeats: repeat r fine-tunes every variant and generates its pool with seed
    # repeat_seeds[r] (the same r-th seed for every variant, so variants are paired by repeat).
    # runtime.seed stays the data split's seed.
    repeat_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # With report.until_conclusive: the cap on repeats, and how many are added per batch (their seeds continue
    # repeat_seeds: max + 1, max + 2, ...). Neither changes what a generator is (not in any stage key).
    max_repeats: int | None = Field(None, ge=3)
    repeat_batch: int = Field(2, ge=1)
    global_batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(3e-7, gt=0)
    max_steps: int = Field(12_000, ge=1)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # Weights stay float32; "bf16" runs the forward pass under bf16 autocast. No "fp16": without a
    # GradScaler its gradients underflow silently, and the GPUs the paper preset targets (A100, H100,
    # H200) all have bf16 (fp32's exponent range, no loss scaling). Pre-Ampere GPUs: "no".
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    # Where the fine-tune's workers read the cached latents: "memory", every latent in one object-store object
    # (the paper's 2,600 images); "shards", parquet shards under the fine-tune's checkpoints folder, streamed
    # within feed_memory_budget_mb per worker (fairskin.data.latent_shards: sets far larger than memory). The
    # two draw the same weighted plan semantics from different random streams, so a run's batches differ.
    latent_feed: Literal["memory", "shards"] = "memory"
    # Per worker, with latent_feed = shards: decoded latents, read buffers and headroom (MB of 2**20 bytes).
    # Does not change what a run draws, only how much it reads at once.
    feed_memory_budget_mb: float = Field(1024.0, gt=0)
    cbdm_tau: float = Field(1.0, ge=0)
    cbdm_gamma: float = Field(0.25, ge=0)
    # y' per sample: uniform over all subclasses, y included (official CBDM fine-tune code, the
    # paper's sum over Y), or uniform over the other subclasses only.
    cbdm_other: Literal["all", "others"] = "all"
    prompt_drop_prob: float = Field(0.1, ge=0, le=1)
    checkpoint_every: int = Field(500, ge=1)
    num_workers: int = Field(1, ge=0)
    # Who runs the fine-tune loop: "ray_train", a TorchTrainer of num_workers workers (checkpoints, retries and
    # placement by Ray Train); "in_process", the same loop as one Train worker, in the driver's process, one
    # generator at a time (no controller, worker or helper processes: about 25 s of CPU less per fit, what a
    # small fit costs in all). Not in any key: one worker ends with the same weights either way
    # (tests/test_finetune.py), so each reuses the other's generators; an in-process fit also continues Ray
    # Train's checkpoints (a Ray Train fit continues only its own).
    trainer: Literal["ray_train", "in_process"] = "ray_train"
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # Ray Train's placement of the workers (ScalingConfig.placement_strategy): PACK (Ray's default) fills
    # a node first; SPREAD / STRICT_SPREAD put them on different nodes (STRICT: one per node, or wait).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Variants fine-tuned at once (each its own TorchTrainer); results do not depend on it.
    parallel_variants: int = Field(1, ge=1)
    max_failures: int = Field(0, ge=-1)
    # Keep the fine-tune checkpoints (<runs root>/checkpoints/finetune-<key>/) once the stage is done;
    # by default they are deleted then (a killed or interrupted stage always keeps them, to resume).
    keep_checkpoints: bool = False
    base_vae_steps: int = Field(0, ge=0)
    base_unet_steps: int = Field(0, ge=0)
    # The tiny base's noise schedule (model = tiny only): SD's scaled-linear betas leave a terminal SNR of
    # 0.0047, so x_T still carries the image's mean colour (for 16 x 16 latents the mean of the noise has std
    # 1/16, the signal's mean ~0.07: an SNR near 1 for the mean). The UNet then learns to read the skin tone
    # from the noise instead of the prompt, and sampling from pure noise ignores the prompt's group. True:
    # betas rescaled to zero terminal SNR with v-prediction and trailing timesteps (Lin et al. 2024, "Common
    # Diffusion Noise Schedules and Sample Steps are Flawed"; diffusers' rescale_betas_zero_snr), saved in the
    # base's scheduler config, so the fine-tune and every sampler inherit it.
    zero_terminal_snr: bool = False
    # Min-SNR-gamma weighting of the tiny base UNet's loss (base and control bases; Hang et al. 2023, 5 in
    # their paper and diffusers' scripts' --snr_gamma): min(SNR_t, gamma) on the x_0 error caps the nearly
    # clean timesteps that dominate v-prediction's loss. None: unweighted. The fine-tune keeps the paper's loss.
    base_snr_gamma: float | None = Field(None, gt=0)

    @field_validator("repeat_seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"repeat seeds must be distinct and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _base_training_needs_tiny(self) -> DiffusionConfig:
        if self.base_snr_gamma is not None and self.model != "tiny":
            raise ValueError(
                f"diffusion.base_snr_gamma weighs the tiny base's training; with diffusion.model = "
                f"{self.model!r} there is no base to train: leave it unset"
            )
        if self.zero_terminal_snr and self.model != "tiny":
            raise ValueError(
                f"diffusion.zero_terminal_snr = true trains the tiny base's noise schedule; with "
                f"diffusion.model = {self.model!r} the pretrained model's own schedule is used: "
                "set it to false"
            )
        return self

    @model_validator(mode="after")
    def _shards_need_cached_latents(self) -> DiffusionConfig:
        if self.latent_feed == "shards" and not self.cache_latents:
            raise ValueError(
                "diffusion.latent_feed = shards streams cached latents: it needs "
                "diffusion.cache_latents = true (without cached latents the workers encode "
                "pixels every step, held in memory)"
            )
        return self

    @model_validator(mode="after")
    def _in_process_is_one_worker(self) -> DiffusionConfig:
        one_worker = self.num_workers == 1 and self.latent_feed == "memory" and self.cache_latents
        if self.trainer == "in_process" and not one_worker:
            raise ValueError(
                f"diffusion.trainer = in_process runs one worker's loop over the cached latents in memory: it "
                f"needs diffusion.num_workers = 1 (got {self.num_workers}), diffusion.latent_feed = memory (got "
                f"{self.latent_feed!r}) and diffusion.cache_latents = true (got {self.cache_latents}); use "
                "trainer = ray_train for more workers, the shard feed or per-step encoding"
            )
        return self

    @field_validator("custom_variants")
    @classmethod
    def _custom_hooks(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        return [check_hooks(spec) for spec in value]

    @model_validator(mode="after")
    def _known_variants(self) -> DiffusionConfig:
        custom = [v.name for v in self.custom_variants]
        clash = sorted({n for n in custom if custom.count(n) > 1 or find_method(n) is not None})
        if clash:
            raise ValueError(
                f"custom_variants {clash}: a name is defined twice or is already registered as a method ({method_names()})"
            )
        dup = sorted({n for n in self.variants if self.variants.count(n) > 1})
        if dup:
            raise ValueError(f"variants {dup} appear more than once")
        for name in self.variants:
            if is_mix_control(name):
                slug, _ = parse_mix_control(name)
                missing = [v for v in ("vanilla", CONTROL_DROP_PREFIX + slug) if v not in self.variants]
                if missing:
                    raise ValueError(
                        f"{name!r} mixes the pools of vanilla and {CONTROL_DROP_PREFIX + slug}: add "
                        f"{missing} to diffusion.variants"
                    )
        unknown = [n for n in self.variants if n not in custom and find_method(n) is None]
        if unknown:
            raise ValueError(
                f"unknown variant(s) {unknown}; methods: {method_names()}"
                + (f", custom: {custom}" if custom else "")
                + f" or {CONTROL_DROP_PREFIX}<group>"
                + " (define one under diffusion.custom_variants, or install a package that registers it "
                "under the fairskin.methods entry point)"
            )
        return self

    def variant(self, name: str) -> VariantSpec:
        """The spec of variant ``name``: a custom one from this config, else the method's."""
        for spec in self.custom_variants:
            if spec.name == name:
                return spec
        return self.method(name).spec

    def method(self, name: str) -> Method:
        """Variant ``name`` as a method: its spec, module and version (a custom variant: module ``config``)."""
        for spec in self.custom_variants:
            if spec.name == name:
                return Method(spec, "config", 0)
        method = find_method(name)
        if method is None:
            raise KeyError(f"unknown variant {name!r}; methods: {method_names()}")
        return method

    def for_variant(self, spec: VariantSpec) -> DiffusionConfig:
        """These settings with the variant's own ``learning_rate`` / ``max_steps`` where it sets them."""
        update = {k: getattr(spec, k) for k in ("learning_rate", "max_steps") if getattr(spec, k) is not None}
        return self.model_copy(update=update) if update else self

    @property
    def repeats(self) -> int:
        """R: generator repeats (fine-tune and pool) per variant."""
        return len(self.repeat_seeds)


class GenerationConfig(_Section):
    """Synthetic pools: P images per subclass per variant."""

    images_per_subclass: int = Field(1000, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    inference_steps: int = Field(50, ge=1)
    scheduler: Literal["pndm", "ddim", "ddpm", "euler", "euler_a", "dpm", "unipc"] = "pndm"
    batch_size: int = Field(8, ge=1)  # images per work item; fixed, so pools are byte-identical on CPU
    # Sampling dtype of the pipeline's weights (fp16 on a GPU only: fp32 on CPU, bf16 on either) and the
    # UNet's memory format; both change the pools' bytes (the stage key holds them). Defaults stay fp32 /
    # contiguous until an equivalence test on the study preset shows fidelity unchanged (README).
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    use_gpu: bool = False
    cpus_per_actor: float = Field(1.0, gt=0)  # also the torch thread count of every item (rounded up)
    num_actors: int | None = Field(None, ge=1)  # default: as many as the cluster fits
    # Who samples the pools: "ray_actors", a pool of num_actors Ray actors (lost actors replaced, items
    # retried); "in_process", the same items one after another in the driver's process, with an actor's thread
    # count (no actor process to start and no model to load again: about 10 s of CPU less per generate stage,
    # most of a small one). Not in any key: both write the same bytes (tests/test_generate.py).
    executor: Literal["ray_actors", "in_process"] = "ray_actors"
    real_split: Literal["train", "val", "test"] = "train"
    inception_weights_path: Path | None = None
    # The judge (disease fidelity; on synthetic data also the FID/KID/IS feature space): images per
    # subclass of its fresh procedural training set (every fifth validates). Unused for fitzpatrick17k.
    judge_images_per_subclass: int = Field(200, ge=5)
    judge_batch_size: int = Field(16, ge=1)  # small batches: enough steps on a small set (else classifier.*)
    # K pools per generator, sampled from the same fine-tuned weights under these seeds (the pool level of the
    # variance components, fairskin.metrics.components). Seed 0 is the pool every run made before (its noise
    # is the generator's seed); pool seed k > 0 names the pool <generator>-p<k>.
    pool_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("pool_seeds")
    @classmethod
    def _distinct_pool_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"pool seeds must be distinct and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _fp16_needs_a_gpu(self) -> GenerationConfig:
        if self.dtype == "fp16" and not self.use_gpu:
            raise ValueError(
                "generation.dtype fp16 needs generation.use_gpu (CPU kernels are slow or missing "
                "for fp16); use bf16 on CPU"
            )
        return self


class ClassifierConfig(_Section):
    """Level 3: the downstream ViT classifier."""

    model: str = "tiny"  # "tiny" (built in code) or a local folder / hub id of a ViT
    allow_download: bool = False
    image_size: int = Field(224, ge=8)
    epochs: int = Field(10, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    downstream_mode: Literal["random", "resample", "reweight"] = "random"
    use_gpu: bool = False  # train, predict and extract features on CUDA (the reference, evaluate and tune trials)
    accuracy_floor: float = Field(0.05, gt=0, le=1)
    bootstrap_samples: int = Field(1000, ge=0)


class TuneConfig(_Section):
    """Ray Tune + Optuna searches."""

    space: str = "ablation"
    num_trials: int | None = Field(None, ge=1)
    cpus_per_trial: float = Field(0.5, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    # Tune's FailureConfig: times a failed trial is restarted (from its start: trials keep no checkpoint; its
    # MLflow run keeps the epochs already logged), e.g. after its node was lost; -1: always. Not in the stage key.
    max_failures: int = Field(0, ge=-1)
    count_scale: float = Field(1.0, gt=0)
    train_seeds: int | None = Field(None, ge=1)  # the pipeline's study: training seeds 0..N-1 (default: the space's)
    # After a tpe/random study, the best trial and the Pareto points are re-trained with this many
    # extra classifier seeds, so the study reports each chosen point with its noise (0: off). A generator
    # study re-fine-tunes them (and vanilla) under this many new generator seeds (fairskin.tune.confirm).
    confirm_seeds: int = Field(3, ge=0)
    # At most this many distinct settings are confirmed: the best trial, then the Pareto front's best point
    # on each objective in turn (fairskin.tune.confirm.front_order); None: the best and the whole front.
    confirm_max_points: int | None = Field(None, ge=1)
    # Generator studies (``trainable: generator``): P images per subclass in each trial's pool, made at
    # every checkpoint and scored (skin tone, disease fidelity, FID per group), and whether FID is computed.
    generator_pool_per_subclass: int = Field(4, ge=2)
    # Confirmations of a generator study: P images per subclass in each confirmation pool (None: as the search).
    confirm_pool_per_subclass: int | None = Field(None, ge=2)
    generator_fid: bool = True


class ReportConfig(_Section):
    """The ablation report: paired differences against a baseline variant, verdicts on declared endpoints.

    ``primary`` (at most five report metric keys, :mod:`fairskin.metrics.endpoints`) are declared here,
    before any data, each with an equivalence ``margins`` entry and optionally a ``resolutions`` entry
    (both in the metric's own units). Each compared variant gets one Holm family over them; every
    other metric is exploratory. The controls read the same declaration.
    """

    baseline: str = "vanilla"
    level: float = Field(0.95, gt=0, lt=1)  # interval coverage
    alpha: float = Field(0.05, gt=0, lt=1)  # family-wise error rate of each variant's primary family
    power: float = Field(0.8, gt=0, lt=1)  # for the minimum detectable effect
    primary: list[str] = Field(default_factory=lambda: list(DEFAULT_PRIMARY))
    margins: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MARGINS))
    resolutions: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RESOLUTIONS))
    primary_mode: Literal["random", "resample", "reweight"] = "random"  # classifier endpoints read this mode
    # Repeats until conclusive (fairskin.pipeline.conclusive): run the pipeline at max(3, R) repeats, then add
    # diffusion.repeat_batch at a time until every primary verdict of every compared method is better, worse or
    # equivalent (group-sequential boundaries, fairskin.metrics.sequential), diffusion.max_repeats is reached, or
    # the next batch would pass budget_hours of wall time.
    until_conclusive: bool = False
    budget_hours: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _declaration(self) -> ReportConfig:
        problems = endpoint_problems(self.primary, self.margins, self.resolutions)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def declaration(self, config_hash: str = "") -> Declaration:
        """The primary endpoints as :class:`fairskin.metrics.endpoints.Declaration`."""
        return Declaration(
            primary=tuple(self.primary),
            margins=dict(self.margins),
            resolutions=dict(self.resolutions),
            mode=self.primary_mode,
            alpha=self.alpha,
            power=self.power,
            config_hash=config_hash,
        )


class TrackingConfig(_Section):
    """MLflow: where runs are written."""

    tracking_uri: str | None = None  # default: sqlite:///<runs_root>/mlflow.db
    experiment: str = "fairskin"
    enabled: bool = True


class RuntimeConfig(_Section):
    """Process-level settings: Ray, seeds, threads, where outputs go."""

    runs_root: Path = Path("./runs")
    seed: int = Field(0, ge=0)
    num_cpus: float | None = Field(None, gt=0)
    progress: bool = True
    # Ray's worker logs, Ray Data's progress bars and library progress bars on the console (else only in the
    # Ray session's log files); jobs/full_pipeline.py --verbose sets it.
    verbose: bool = False

    @field_validator("runs_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return Path(os.path.abspath(os.path.expanduser(str(value))))


class FairSkinConfig(_Section):
    """The complete, resolved configuration of one invocation."""

    preset: str = "demo"
    data: DataConfig = Field(default_factory=DataConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def section(self, dotted: str) -> Any:
        """The value at a dotted path, e.g. ``"data.image_size"``, as plain JSON data."""
        value: Any = self.model_dump(mode="json")
        for part in dotted.split("."):
            value = value[part]
        return value

    @model_validator(mode="after")
    def _drop_groups_exist(self) -> FairSkinConfig:
        slugs = {group_slug(g): g for g in self.data.group_names}
        for name in self.diffusion.variants:
            dropped = self.diffusion.variant(name).drop_group
            if dropped is not None and group_slug(dropped) not in slugs:
                raise ValueError(
                    f"variant {name!r} drops group {dropped!r}, which is not one of data.groups "
                    f"({self.data.group_names}); name it as {sorted(CONTROL_DROP_PREFIX + s for s in slugs)}"
                )
        return self

    @model_validator(mode="after")
    def _conclusive_design(self) -> FairSkinConfig:
        d, r = self.diffusion, self.report
        if not r.until_conclusive:
            if d.max_repeats is not None or r.budget_hours is not None:
                raise ValueError(
                    "diffusion.max_repeats and report.budget_hours are read only with report.until_conclusive = true"
                )
            return self
        if d.max_repeats is None:
            raise ValueError("report.until_conclusive = true needs diffusion.max_repeats (the cap on repeats)")
        start = max(3, len(d.repeat_seeds))
        if d.max_repeats < start:
            raise ValueError(
                f"diffusion.max_repeats = {d.max_repeats} is below the first look's {start} repeats "
                f"(max(3, len(diffusion.repeat_seeds)))"
            )
        if r.baseline not in d.variants or len(d.variants) < 2:
            raise ValueError(
                f"report.until_conclusive compares variants with report.baseline = {r.baseline!r}: "
                f"diffusion.variants {d.variants} must hold it and at least one other"
            )
        return self

    @model_validator(mode="after")
    def _sampler_handles_zero_snr(self) -> FairSkinConfig:
        # diffusers' PNDM has no rescale_betas_zero_snr: it would sample the rescaled model on SD's betas
        if self.diffusion.zero_terminal_snr and self.generation.scheduler in NO_ZERO_SNR_SAMPLERS:
            raise ValueError(
                f"generation.scheduler = {self.generation.scheduler!r} cannot sample a model trained "
                f"with diffusion.zero_terminal_snr = true; use ddim, ddpm, euler, euler_a, dpm or unipc"
            )
        return self

    def dropped_group(self, variant: str) -> str | None:
        """The data group (its configured name) variant ``variant`` never sees, or None."""
        dropped = self.diffusion.variant(variant).drop_group
        if dropped is None:
            return None
        return next(g for g in self.data.group_names if group_slug(g) == group_slug(dropped))

    def dropped_groups(self) -> list[str]:
        """Every group some configured variant drops (the control bases to train), in data order."""
        wanted = {self.dropped_group(v) for v in self.diffusion.variants} - {None}
        return [g for g in self.data.group_names if g in wanted]

    def declaration(self) -> Declaration:
        """The report's primary endpoints, stamped with the hash of this configuration (its runtime and
        tracking sections left out: where a run writes does not change what it claims)."""
        tree = self.model_dump(mode="json", exclude={"runtime", "tracking"})
        return self.report.declaration(config_hash(tree))

    def tracking_uri(self) -> str:
        """MLflow tracking URI: the configured one, else a SQLite file under the runs root."""
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{self.runtime.runs_root / 'mlflow.db'}"


# --------------------------------------------------------------------------- loading


def build_config(
    preset: str = "demo", yaml_path: str | Path | None = None, overrides: Iterable[str] = ()
) -> FairSkinConfig:
    """Resolve defaults <- preset <- YAML file <- ``key.sub=value`` overrides into a validated config."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    tree: dict[str, Any] = deep_merge({}, PRESETS[preset]())
    tree["preset"] = preset
    origin = f"preset {preset!r}"
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        tree = deep_merge(tree, loaded)
        origin += f" + {path}"
    overrides = list(overrides)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(tree, parts, value)
    if overrides:
        origin += " + overrides " + " ".join(overrides)
    try:
        return FairSkinConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def dump_config(config: FairSkinConfig, path: str | Path | None = None) -> str:
    """The resolved configuration as YAML; written atomically to ``path`` when given.

    Credentials in URIs (``tracking.tracking_uri`` and any other string) are replaced by ``***``
    (:func:`fairskin.secrets.redact`): the dump is for people and logs, not a secret store.
    """
    from fairskin.secrets import redact_tree

    text = yaml.safe_dump(redact_tree(config.model_dump(mode="json")), sort_keys=False)
    if path is not None:
        from fairskin.io import atomic_write_text

        atomic_write_text(Path(path), text)
    return text
