"""The generator trainable of a generator study (``trainable: generator``, issue 17).

One trial = one fine-tune from the shared base (the pipeline's ``base`` stage) with the trial's
settings as a custom variant (:func:`fairskin.tune.spaces.variant_from_trial`), then, at every
``diffusion.checkpoint_every`` steps and at the last one, a small pool
(``tune.generator_pool_per_subclass`` images per subclass, seeded like the pipeline's pools) scored
with the evaluate stage's fidelity figures: skin-tone agreement (overall, per group, worst group),
disease fidelity with the judge (overall, per group, worst group) and, with ``tune.generator_fid``,
FID per group and its variance over groups. Each checkpoint is one ``ray.tune.report(metrics,
checkpoint=...)``, so ASHA can stop a trial on fine-tune steps and a restored trial continues from
its last checkpoint.

**Why the fine-tune runs in the trial's process, not in a nested TorchTrainer.** The field notes
describe a TorchTrainer inside a Tune trial, and it works, but on the 2-core machines this engine
is sized for: every ``fit()`` pays ~40 s of fixed Ray Train start-up (more than a smoke or demo
fine-tune itself), the trial (driver) and its Train worker each hold CPU beside the Ray Data
tasks that feed the worker (the deadlock the notes record unless both take half a CPU, which
leaves one trial at a time), and the pool must be generated and scored from the live UNet at
every checkpoint, which a Train worker's ``report`` does not hand back to the trial. So the trial
runs the same step code as the Train workers (:func:`fairskin.diffusion.finetune.local_step`:
same plan, flips, per-step generators, loss, clipping, AdamW, EMA) as a single worker (rank 0 of
1), fed from the same level-1 plan (:class:`fairskin.data.stream.RunPlan`) without Ray Data. A
GPU cluster gets one GPU per trial (``tune.gpus_per_trial``); several workers per trial are not
supported here.

Every trial fine-tunes and samples with ``diffusion.repeat_seeds[0]``: trials differ only in their
settings (common random numbers), so their differences are not seed noise.

Outputs of a finished trial, under ``<study>/generators/<trial variant>/``: ``pipeline/`` (loads
with ``StableDiffusionPipeline.from_pretrained``), ``pool.npz`` + ``pool_meta.csv`` (the last
checkpoint's pool), ``preview.png`` (one image per subclass; logged to the trial's MLflow run) and
``variant.yaml`` (the ``diffusion.custom_variants`` entry that reproduces the generator).

The fine-tune is the shared loop of :mod:`fairskin.diffusion.loop`; making, scoring and saving the pool is
:mod:`fairskin.tune.generator_pool` (``generate_pool`` and ``score_pool`` are re-exported here).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.config import FairSkinConfig, VariantSpec
from fairskin.tune.generator_pool import generate_pool as generate_pool  # re-exported (benchmarks)
from fairskin.tune.generator_pool import pool_scorers, save_pool
from fairskin.tune.generator_pool import score_pool as score_pool  # re-exported
from fairskin.tune.spaces import ResolvedSpace, variant_from_trial

GENERATORS_DIR = "generators"


@dataclass
class GeneratorSources:
    """The pipeline folders a generator study reads: the prepare stage's shards, the base pipeline,
    the judge and the reference classifier (the judge on Fitzpatrick17k)."""

    shards: Path
    base: Path
    judge: Path
    reference: Path


@dataclass
class GeneratorInputs:
    """What every generator trial shares. ``cache``: ref to (per-row arrays, prompt embeddings), the
    latent cache made once on the driver (:func:`fairskin.diffusion.finetune.cache_for`); ``real``:
    ref to (real pixels, real meta) of ``generation.real_split`` for FID (None without FID)."""

    config: FairSkinConfig
    space: ResolvedSpace
    sources: GeneratorSources
    study_dir: Path
    cache: Any
    bands: Any
    judge_real: pd.DataFrame
    real: Any
    # Hooks ``hook(step, rank)`` run before each fine-tune step of every trial (fairskin.diffusion.loop): a
    # profiler, or a test's fault injection (the tests register theirs). They travel to the trials: they must pickle.
    step_hooks: tuple = ()


def generator_sources(config: FairSkinConfig, echo: Callable[[str], None] = print) -> GeneratorSources:
    """Run (or skip, when done) the pipeline stages a generator study needs, as keyed stages:
    ``prepare``, ``base``, ``judge``, ``reference``."""
    from fairskin.pipeline import run_pipeline
    from fairskin.pipeline.stages.base import base_pipeline_folder

    outcome = run_pipeline(config, stages=["prepare", "base", "judge", "reference"], echo=echo)
    r = outcome.results
    return GeneratorSources(
        shards=r["prepare"].path / "shards",
        base=base_pipeline_folder(r["base"]),
        judge=r["judge"].path,
        reference=r["reference"].path,
    )


def put_generator_inputs(
    config: FairSkinConfig, space: ResolvedSpace, sources: GeneratorSources, study_dir: Path
) -> GeneratorInputs:
    """On the driver, once: the latent cache (object store), the real skin-tone bands, the judge's
    real baseline and, for FID, the real images (object store)."""
    import ray

    from fairskin.data.stream import decode_local
    from fairskin.diffusion.finetune import cache_for
    from fairskin.metrics.references import load_references

    train = decode_local(sources.shards, splits=["train"])
    rows, cond = cache_for(config, sources.base, train)
    cache = ray.put((rows.arrays(), cond))
    refs = load_references(config, sources.shards, sources.judge, sources.reference)
    bands, judge_real = refs.bands, refs.judge_real
    real = ray.put((refs.real_pixels, refs.real_meta)) if config.tune.generator_fid else None
    return GeneratorInputs(
        config=config,
        space=space,
        sources=sources,
        study_dir=Path(study_dir),
        cache=cache,
        bands=bands,
        judge_real=judge_real,
        real=real,
    )


def trial_variant_name(trial_id: str) -> str:
    """A Tune trial id -> a valid variant name (``trial_<id>``, lower case, ``_`` for other characters)."""
    return "trial_" + re.sub(r"[^a-z0-9]+", "_", str(trial_id).lower()).strip("_")


def checkpoint_steps(max_steps: int, every: int) -> list[int]:
    """The steps at which a trial reports: every ``every`` steps and the last one."""
    return sorted({*range(every, max_steps + 1, every), max_steps})


# --------------------------------------------------------------------------- the trial


def run_generator_trial(
    trial_config: Mapping[str, Any],
    inputs: GeneratorInputs,
    name: str,
    report: Callable[[dict[str, Any], str | None], None],
    checkpoint_folder: Path | None = None,
    device: str = "cpu",
    *,
    variant: VariantSpec | None = None,
    out: Path | None = None,
    checkpoints: bool = True,
    pool_per_subclass: int | None = None,
) -> Path:
    """Fine-tune one trial's generator and score its pool at every checkpoint.

    ``report(metrics, checkpoint_dir)`` is called once per checkpoint (the folder is only valid during
    the call); ``checkpoint_folder``: a checkpoint to continue from (a restored trial). Returns the
    trial's output folder.

    A confirmation (:func:`confirm_generator`) passes ``variant`` (the generator to fine-tune, its
    ``seed_salt`` giving the seed: :func:`fairskin.diffusion.variants.salted_seed` of
    ``diffusion.repeat_seeds[0]``, as the pipeline would), ``out`` (its folder), ``checkpoints=False``
    (one report, at the last step, with no checkpoint folder and no saved pipeline) and
    ``pool_per_subclass`` (P; default ``tune.generator_pool_per_subclass``).
    """
    import ray
    import torch
    from diffusers import DDPMScheduler

    from fairskin.data.sampling import WeightedSampler
    from fairskin.data.stream import RunPlan
    from fairskin.diffusion.loop import in_process_feed, load_trainee, loss_settings, method_hooks
    from fairskin.diffusion.models import load_sd
    from fairskin.diffusion.variants import salted_seed

    config, sources = inputs.config, inputs.sources
    if variant is None:
        variant = variant_from_trial(trial_config, name, inputs.space.fixed_generator)
    diffusion = config.diffusion.for_variant(variant)
    d = diffusion.model_dump(mode="json")
    seed = salted_seed(diffusion.repeat_seeds[0], variant.seed_salt)  # a trial: repeat_seeds[0] itself (salt 0)
    per_subclass = pool_per_subclass or config.tune.generator_pool_per_subclass
    out = Path(out) if out is not None else inputs.study_dir / GENERATORS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "variant.yaml").write_text(variant_yaml(variant))

    base = str(Path(sources.base).resolve()) if Path(sources.base).is_dir() else str(sources.base)
    parts = load_sd(base)
    arrays, cond = ray.get(inputs.cache)
    cond_table = torch.from_numpy(np.array(cond)).to(device)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    hooks = method_hooks(
        variant.model_dump(mode="json"),
        seed=seed,
        groups=config.data.group_names,
        num_diseases=len(config.data.diseases),
        max_steps=d["max_steps"],
        device=device,
    )
    trainee, state = load_trainee(base, Path(checkpoint_folder) if checkpoint_folder else None, d, device, None, hooks)
    start = int(state["step"]) if state else 0
    loss = loss_settings(variant.model_dump(), d)
    plan = RunPlan(WeightedSampler(np.asarray(arrays["subclass"]), variant.weights, variant.apply, seed))
    scorers = pool_scorers(config, sources, device)
    feed = in_process_feed(
        plan,
        arrays,
        cond_table,
        start=start,
        seed=seed,
        d=d,
        loss=loss,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        device=device,
    )
    trial = _Trial(
        name, variant, inputs, out, parts, trainee, d, loss, seed, per_subclass, device, scorers, checkpoints
    )
    trial.run(scheduler, feed, report)
    return out


@dataclass
class _Trial:
    """One generator fine-tune under way: what its checkpoints generate, score, save and report."""

    name: str
    variant: VariantSpec
    inputs: GeneratorInputs
    out: Path
    parts: Any  # the base pipeline's parts (fairskin.diffusion.models.load_sd)
    trainee: Any  # fairskin.diffusion.loop's trainee (UNet, EMA, optimiser)
    d: dict[str, Any]  # the variant's diffusion settings
    loss: Any  # fairskin.diffusion.loop.loss_settings
    seed: int
    per_subclass: int
    device: str
    scorers: tuple[Any, Any, Any]  # generator_pool.pool_scorers: judge, its info, FID space
    checkpoints: bool

    def run(self, scheduler, feed, report: Callable[[dict[str, Any], str | None], None]) -> None:
        """The shared fine-tune loop; at each report step, the pool's figures (and a checkpoint) to ``report``."""
        from fairskin.diffusion.loop import fine_tune, save_checkpoint
        from fairskin.diffusion.losses import check_finite_loss

        d = self.d
        reports = checkpoint_steps(d["max_steps"], d["checkpoint_every"]) if self.checkpoints else [d["max_steps"]]
        window: list[float] = []
        for done, step_metrics, first_bad in fine_tune(
            self.trainee, scheduler, feed, d=d, loss=self.loss, device=self.device, step_hooks=self.inputs.step_hooks
        ):
            window.append(float(step_metrics["loss"]))
            if done not in reports:
                continue
            check_finite_loss(first_bad, f"generator trial {self.name}")
            metrics = self.score(done, window)
            window.clear()
            if not self.checkpoints:
                report(metrics, None)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(Path(tmp), self.trainee, {"step": done, "loss": metrics["loss"], "trial": self.name})
                report(metrics, tmp)

    def score(self, done: int, window: list[float]) -> dict[str, Any]:
        """The figures of step ``done``: its pool's scores, the mean loss since the last report, the settings;
        at the last step the pool, preview and (with checkpoints) pipeline are saved and their paths added."""
        unet, ema = self.trainee.unet, self.trainee.ema
        sampler_unet = ema if ema is not None else unet
        config = self.inputs.config
        pixels, meta = generate_pool(self.parts, sampler_unet, config, self.per_subclass, self.seed, self.device)
        metrics = {
            "step": done,
            "loss": float(np.mean(window)),
            "cbdm_tau": float(self.loss.tau),
            "cbdm_gamma": float(self.loss.gamma),
            "learning_rate": float(self.d["learning_rate"]),
            "complete": float(done == self.d["max_steps"]),
            **score_pool(pixels, meta, self.inputs, *self.scorers),
        }
        if done == self.d["max_steps"]:
            from fairskin.diffusion.loop import save_result

            save_pool(self.out, pixels, meta, config, title=f"{self.name}: {settings_line(self.variant)}")
            if self.checkpoints:
                save_result(self.parts, self.trainee, self.out / "pipeline")
            metrics["preview"] = str(self.out / "preview.png")
            metrics["variant_file"] = str(self.out / "variant.yaml")
        return metrics


def settings_line(variant: VariantSpec) -> str:
    """A generator's settings on one line (``k=v, ...``, floats to 3 significant digits; no name, no salt)."""
    keep = variant.model_dump(
        exclude_none=True, exclude={"name", "seed_salt"} | (set() if variant.hooks else {"hooks"})
    )
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def variant_yaml(variant: VariantSpec) -> str:
    """A trial's variant as a config file (the text of ``variant.yaml``): ``diffusion.custom_variants``
    holding its one entry, loadable with ``--config`` over any preset. The entry defines the variant;
    the pipeline fine-tunes it only once its name is also in ``diffusion.variants`` (the comment says how).
    A salted variant (a confirmation's generator) keeps its ``seed_salt``, so the pipeline trains it
    under the same seed."""
    import yaml

    # seed_salt only when set (a confirmation's generator): a trial's entry stays free of it.
    entry = variant.model_dump(mode="json", exclude_none=True, exclude=None if variant.seed_salt else {"seed_salt"})
    return (
        f"# the diffusion.custom_variants entry of generator {variant.name}; to take it into the ablation:\n"
        f"#   python jobs/full_pipeline.py --preset PRESET --config THIS_FILE "
        f'"diffusion.variants=[vanilla, fairskin_s, {variant.name}]"\n'
        + yaml.safe_dump({"diffusion": {"custom_variants": [entry]}}, sort_keys=False)
    )


def generator_trial(config: dict[str, Any], inputs: GeneratorInputs) -> None:
    """Tune function trainable of a generator study (see the module docstring)."""
    import warnings

    import torch
    from ray import tune

    from fairskin.runtime import configure_worker

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    configure_worker(int(config.get("seed", 0)))
    name = trial_variant_name(tune.get_context().get_trial_id())
    device = "cuda" if inputs.config.tune.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    checkpoint = tune.get_checkpoint()

    def report(metrics: dict[str, Any], folder: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run_generator_trial(config, inputs, name, report, Path(folder), device)
    else:
        run_generator_trial(config, inputs, name, report, None, device)


def confirm_generator(config: dict[str, Any], inputs: GeneratorInputs) -> list[dict[str, Any]]:
    """One confirmation fine-tune of a generator study (inside a Ray task; see :mod:`fairskin.tune.confirm`).

    ``config``: ``{"seed": int (the trial's worker seed), "generator": VariantSpec fields (the point's
    generator, salt 0), "seed_salt": int (this confirmation's salt, > 0)}``. The generator is fine-tuned
    from the base under seed :func:`~fairskin.diffusion.variants.salted_seed` (``repeat_seeds[0]``, salt),
    its pool of ``tune.confirm_pool_per_subclass`` (else ``generator_pool_per_subclass``) images per
    subclass made under that seed too and scored like a trial's. Outputs under
    ``<study>/confirm/generators/<name>_salt<salt>/`` (pool, preview, variant.yaml; no pipeline).
    Returns one report: the figures of :func:`score_pool` plus step, loss and the preview / variant paths."""
    import warnings

    import torch

    from fairskin.runtime import configure_worker

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    salt = int(config["seed_salt"])
    if salt <= 0:
        raise ValueError(f"a confirmation needs a seed_salt > 0 (salt 0 is the search's seed), got {salt}")
    configure_worker(int(config.get("seed", 0)))
    base = VariantSpec.model_validate(dict(config["generator"]))
    spec = base.model_copy(update={"name": f"{base.name}_salt{salt}"[:64], "seed_salt": salt})
    VariantSpec.model_validate(spec.model_dump())  # the name still fits the variant-name rule
    device = "cuda" if inputs.config.tune.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    tune = inputs.config.tune
    reports: list[dict[str, Any]] = []
    run_generator_trial(
        config,
        inputs,
        spec.name,
        lambda metrics, _: reports.append(metrics),
        None,
        device,
        variant=spec,
        out=inputs.study_dir / "confirm" / GENERATORS_DIR / spec.name,
        checkpoints=False,
        pool_per_subclass=tune.confirm_pool_per_subclass or tune.generator_pool_per_subclass,
    )
    return reports
