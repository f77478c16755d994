"""The pipeline: stages in order, each keyed, skipped when done, and tracked in MLflow.

    prepare -> vae -> base | control_base | reference | judge -> finetune -> generate -> evaluate -> tune -> report

A stage is a registry entry (:class:`Stage`): the config paths it reads, the stages it
takes as inputs, and a body that writes its folder. One MLflow parent run per
invocation, one child run per stage (also for skipped stages, tagged so). Stages run in this
order, one at a time, except a ``background`` stage (``base``: its work is a Ray task), which
runs while the runner goes on to the next stages that do not take it as input (``base | ...``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairskin.config import ConfigError, FairSkinConfig, dump_config, flatten
from fairskin.lock import holding_runs_root
from fairskin.provenance import TAG_PIPELINE, TAG_STAGE_KEY
from fairskin.stages import StageResult, run_stage, stage_key
from fairskin.tracking import RunHandle, Tracker
from fairskin.versioning import record_environment

StageBody = Callable[[FairSkinConfig, Path, Mapping[str, StageResult], RunHandle], Mapping[str, Any]]
StageLog = Callable[[RunHandle, StageResult], None]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``body(config, out_dir, inputs, run) -> summary`` writes ``out_dir``;
    ``run`` is the stage's MLflow child run (for nested runs, e.g. one per variant)."""

    name: str
    reads: tuple[str, ...]
    body: StageBody
    inputs: tuple[str, ...] = ()
    needs_ray: bool = False
    log: StageLog | None = None
    presets: tuple[str, ...] | None = None  # None: every preset
    # A cheap check of the configuration, run as soon as the stage named `check_after` has a
    # result, so a bad setting fails before the long stages in between, not when this one starts.
    check: Callable[[FairSkinConfig, StageResult], None] | None = None
    check_after: str | None = None
    # Bumped when the meaning of the stage's output changes (a new draw, a new seed rule): it is
    # part of the stage key, so a runs root never serves results of older code as current.
    version: int = 1
    # External inputs: entries of EXTERNAL (dotted config paths naming files / folders, and
    # "tune.space_content") whose content fingerprints are part of the key.
    external: tuple[str, ...] = ()
    # Settings added after keys were in use: (dotted path, the value that reproduces the older behaviour).
    # Each is part of the key only when set to another value, so existing runs roots keep their keys.
    reads_unless: tuple[tuple[str, Any], ...] = ()
    # Its body mostly waits on Ray tasks: the runner starts it on a thread and goes on with the next stages
    # that do not take it as input, so their work shares the cluster with its own (:func:`run_in_order`).
    background: bool = False

    def reads_for(self, config: FairSkinConfig) -> tuple[str, ...]:
        """The config paths in this stage's key for ``config``: ``reads``, plus each ``reads_unless`` path
        whose value is not its older-behaviour value."""
        return self.reads + tuple(p for p, old in self.reads_unless if config.section(p) != old)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


# --------------------------------------------------------------------------- keys from contents


def _path_fingerprint(dotted: str, **options) -> Callable[[FairSkinConfig, Any], str | None]:
    def fingerprint(config: FairSkinConfig, cache) -> str | None:
        from fairskin.fingerprints import content_fingerprint, local_path

        path = local_path(config.section(dotted))  # None: unset, "tiny", or a hub id (its name is the key)
        return None if path is None else content_fingerprint(path, cache, **options)

    return fingerprint


def _space_fingerprint(config: FairSkinConfig, cache) -> str:
    """The resolved search space the tune stage runs (its YAML's content, not its name)."""
    import hashlib
    import json

    blob = json.dumps(pipeline_space(config).model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _model_fingerprint(dotted: str):
    from fairskin.fingerprints import MODEL_SUFFIXES

    return _path_fingerprint(dotted, suffixes=MODEL_SUFFIXES)


# What an external input's fingerprint covers: a file's bytes; the image folder's files (names,
# sizes, bytes; the images sit directly under it); a model folder's weight and config files.
EXTERNAL: dict[str, Callable[[FairSkinConfig, Any], str | None]] = {
    "data.csv_path": _path_fingerprint("data.csv_path"),
    "data.image_root": _path_fingerprint("data.image_root", recursive=False),
    "diffusion.model": _model_fingerprint("diffusion.model"),
    "classifier.model": _model_fingerprint("classifier.model"),
    "generation.inception_weights_path": _path_fingerprint("generation.inception_weights_path"),
    "tune.space_content": _space_fingerprint,
}


def external_fingerprints(stage: Stage, config: FairSkinConfig, cache=None) -> dict[str, str]:
    """Content fingerprints of the external inputs ``stage`` reads (cached under the runs root)."""
    from fairskin.fingerprints import FingerprintCache

    cache = cache if cache is not None else FingerprintCache.for_runs_root(config.runtime.runs_root)
    out = {}
    for dotted in stage.external:
        value = EXTERNAL[dotted](config, cache)
        if value is not None:
            out[dotted] = value
    cache.save()
    return out


def pipeline_stage_key(name: str, config: FairSkinConfig, inputs: Mapping[str, StageResult], cache=None) -> str:
    """The key of stage ``name`` in this pipeline: its config slice, code version, inputs' keys and
    the contents of its external inputs."""
    stage = STAGES[name]
    return stage_key(
        name, config, stage.reads_for(config), inputs, stage.version, external_fingerprints(stage, config, cache)
    )


# --------------------------------------------------------------------------- prepare


def _prepare_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    from fairskin.data.prepare import COUNTS_FILE, prepare_dataset
    from fairskin.metrics.plots import plot_subclass_counts, save_image_grid

    summary = prepare_dataset(config, out)
    import pandas as pd

    table = pd.read_csv(out / COUNTS_FILE)
    plot_subclass_counts(
        table, out / "subclass_counts.png", title=f"{config.data.source}: images per subclass (train / val / test)"
    )
    _preview(out, config, save_image_grid)
    return summary


def _preview(out: Path, config: FairSkinConfig, save_image_grid: Callable) -> None:
    """One training image per (group, disease) as a grid PNG, for a first look in MLflow."""
    from fairskin.data.shards import load_decoded

    pixels, meta = load_decoded(out / "shards", verify=False, splits=["train"])
    images, groups, diseases = [], config.data.group_names, config.data.diseases
    for group in groups:
        for disease in diseases:
            hit = meta.index[(meta["group"] == group) & (meta["disease"] == disease)]
            images.append(pixels[hit[0]] if len(hit) else pixels[0] * 0)
    save_image_grid(images, groups, diseases, out / "preview.png", title="one training image per subclass")


def _prepare_log(run: RunHandle, result: StageResult) -> None:
    s = result.summary
    run.log_metrics({k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for name in ("subclass_counts.csv", "subclass_counts.png", "preview.png"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "prepare")


register_stage(
    Stage(
        "prepare",
        reads=("data", "runtime.seed"),
        body=_prepare_body,
        log=_prepare_log,
        external=("data.csv_path", "data.image_root"),
    )
)


# --------------------------------------------------------------------------- reference


def _reference_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """The no-augmentation classifier (the paper's Figure 3a baseline), kept as the feature
    extractor for IS and t-SNE."""
    from fairskin.classify.train import load_classifier_data, train_classifier
    from fairskin.metrics.plots import plot_group_accuracy

    data = load_classifier_data(inputs["prepare"].path / "shards")
    result = train_classifier(
        data, config.classifier, mode="random", seed=config.runtime.seed, out_dir=out, progress=config.runtime.progress
    )
    plot_group_accuracy(
        result.test, data.groups, out / "group_accuracy.png", title="Reference classifier (real data only)"
    )
    return {f"test_{k}": v for k, v in result.test.items() if not k.endswith("_ci")}


def _reference_log(run: RunHandle, result: StageResult) -> None:
    import pandas as pd

    run.log_metrics(result.summary)
    if not result.skipped and (result.path / "history.csv").exists():
        for _, row in pd.read_csv(result.path / "history.csv").iterrows():
            run.log_metrics(row.to_dict(), step=int(row["epoch"]))
    for name in ("group_accuracy.png", "test_report.json", "history.csv"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "reference")


register_stage(
    Stage(
        "reference",
        reads=("classifier", "runtime.seed"),
        inputs=("prepare",),
        body=_reference_body,
        log=_reference_log,
        external=("classifier.model",),
    )
)


# --------------------------------------------------------------------------- vae


def _vae_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """tiny: train the stand-in VAE (:func:`fairskin.diffusion.base.build_vae`), the one part the base UNet
    and every control base share. A pretrained pipeline brings its own VAE: nothing to do."""
    if config.diffusion.model != "tiny":
        return {"pretrained": 1}
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.base import build_vae

    return build_vae(config, decode_local(inputs["prepare"].path / "shards"), out)


def vae_folder(result: StageResult) -> Path:
    """The trained VAE the ``vae`` stage wrote (tiny model only)."""
    from fairskin.diffusion.base import VAE_FOLDER

    return result.path / VAE_FOLDER


register_stage(
    Stage(
        "vae",
        reads=("diffusion.model", "diffusion.base_vae_steps", "diffusion.global_batch_size", "runtime.seed"),
        inputs=("prepare",),
        body=_vae_body,
        log=lambda run, result: run.log_metrics(result.summary),
    )
)


# --------------------------------------------------------------------------- base


def _base_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """tiny: train a base UNet over the ``vae`` stage's VAE (stands in for pretrained SD).
    Otherwise: record the pretrained pipeline folder every variant starts from."""
    from fairskin.io import atomic_write_json

    if config.diffusion.model != "tiny":
        from fairskin.diffusion.models import load_sd

        load_sd(config.diffusion.model, config.diffusion.allow_download)  # fail here, clearly, if absent
        atomic_write_json(out / "base.json", {"pipeline": config.diffusion.model})
        return {"pretrained": 1}
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.base import build_base

    train = decode_local(inputs["prepare"].path / "shards")
    summary = build_base(config, train, vae_folder(inputs["vae"]), out)
    atomic_write_json(out / "base.json", {"pipeline": "pipeline"})  # relative: the folder is renamed
    return summary


def base_pipeline_folder(result: StageResult) -> Path:
    """The pipeline the base stage stands for: its own folder, or the pretrained folder / hub id."""
    import json

    recorded = json.loads((result.path / "base.json").read_text())["pipeline"]
    own = result.path / recorded
    return own if own.is_dir() else Path(recorded)


register_stage(
    Stage(
        "base",
        reads=(
            "diffusion.model",
            "diffusion.base_unet_steps",
            "diffusion.global_batch_size",
            "diffusion.learning_rate",
            "diffusion.prompt_template",
            "diffusion.zero_terminal_snr",
            "runtime.seed",
        ),
        inputs=("prepare", "vae"),
        body=_base_body,
        external=("diffusion.model",),
        reads_unless=(("diffusion.base_snr_gamma", None),),
        # 2: the VAE is an autoencoder (cosine-decayed rate) with a fixed posterior std and a fitted scaling factor
        # 3: the base UNet reads latents encoded once (same values up to float rounding of the batching)
        # 4: the VAE comes from the vae stage; the UNet trains in a Ray task on one thread
        version=4,
        needs_ray=True,
        background=True,
        log=lambda run, result: run.log_metrics(result.summary),
    )
)


# --------------------------------------------------------------------------- control_base

CONTROL_BASES_FILE = "control_bases.json"


def _control_base_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """One base per group a ``control_drop_<group>`` variant drops (:meth:`FairSkinConfig.dropped_groups`),
    trained without that group (:func:`fairskin.diffusion.base.build_control_bases`), beside the base's
    own UNet; none when no control is configured. A pretrained model cannot forget a group: there the
    control's base is the pretrained pipeline and only its fine-tune drops the group (``base_knows_group`` = 1)."""
    from fairskin.config import group_slug
    from fairskin.io import atomic_write_json

    dropped = config.dropped_groups()
    bases: dict[str, str] = {}
    summary: dict[str, Any] = {"control_bases": len(dropped)}
    if dropped and config.diffusion.model == "tiny":
        from fairskin.data.stream import decode_local
        from fairskin.diffusion.base import build_control_bases

        train = decode_local(inputs["prepare"].path / "shards")
        results = build_control_bases(config, train, vae_folder(inputs["vae"]), dropped, out)
        for group, result in results.items():
            folder = f"without_{group_slug(group)}"
            summary.update({f"{folder}_{k}": v for k, v in result.items()})
            bases[group] = f"{folder}/pipeline"  # relative: the stage folder is renamed
    elif dropped:
        bases = {group: str(config.diffusion.model) for group in dropped}
        summary["base_knows_group"] = 1
    atomic_write_json(out / CONTROL_BASES_FILE, bases)
    return summary


def control_base_folders(result: StageResult) -> dict[str, Path]:
    """dropped group -> the pipeline folder its ``control_drop`` generators start from."""
    import json

    recorded = json.loads((result.path / CONTROL_BASES_FILE).read_text())
    return {g: (result.path / p if (result.path / p).is_dir() else Path(p)) for g, p in recorded.items()}


def _dropped_groups_key(config: FairSkinConfig, cache) -> str | None:
    return ",".join(config.dropped_groups()) or None


# Derived from the variants, not a path: which control bases exist (so adding a variant that drops
# nothing leaves the stage's key alone).
EXTERNAL["diffusion.dropped_groups"] = _dropped_groups_key

register_stage(
    Stage(
        "control_base",
        reads=STAGES["base"].reads,
        reads_unless=STAGES["base"].reads_unless,
        inputs=("prepare", "vae"),
        needs_ray=True,
        # 2: its UNet reads latents encoded once, as the base's does
        # 3: from the vae stage's VAE, not the base's folder: it trains while the base's UNet does
        version=3,
        body=_control_base_body,
        external=("diffusion.model", "diffusion.dropped_groups"),
        log=lambda run, result: run.log_metrics(result.summary),
    )
)


# --------------------------------------------------------------------------- finetune


# What the fine-tune's result depends on: every diffusion field but these, so a rerun with more
# retries, another concurrency, another placement or kept checkpoints resumes the same checkpoints (same key).
# feed_memory_budget_mb sizes the shard feed's reads, not its draws; latent_feed is in the key when not "memory".
_FINETUNE_IGNORES = (
    "max_failures",
    "parallel_variants",
    "keep_checkpoints",
    "placement_strategy",
    "feed_memory_budget_mb",
    "latent_feed",
)


def _finetune_reads() -> tuple[str, ...]:
    from fairskin.config import DiffusionConfig

    return tuple(f"diffusion.{f}" for f in DiffusionConfig.model_fields if f not in _FINETUNE_IGNORES)


def finetune_checkpoints(config: FairSkinConfig, key: str) -> Path:
    """``<runs root>/checkpoints/finetune-<key>``: one folder per generator, outside the stage's
    temporary folder, so a killed or interrupted stage resumes from them."""
    return config.runtime.runs_root / "checkpoints" / f"finetune-{key}"


def _finetune_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """Fine-tune every generator (variant x repeat, ``diffusion.variants`` x ``diffusion.repeat_seeds``)
    from the base on Ray Train, each a child run; writes ``<generator>/pipeline`` and
    ``fingerprints.json`` (generator -> fingerprint of its fine-tuned UNet).

    Each generator checkpoints into ``finetune_checkpoints(config, key) / <generator>`` and keeps its
    MLflow child run id there: a rerun after a kill continues both. On Ctrl-C the running fits are
    aborted (their runs marked KILLED, their checkpoints kept) and KeyboardInterrupt propagates.
    """
    import shutil
    import threading

    from fairskin.config import group_slug
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.finetune import FitInterrupted, cache_for, finetune_variant, request_stop
    from fairskin.diffusion.variants import fine_tuned_generators, generator_seed
    from fairskin.io import atomic_write_json
    from fairskin.provenance import folder_fingerprint, split_generator_id
    from fairskin.stages import is_finished, stage_dir

    d = config.diffusion
    key = pipeline_stage_key("finetune", config, inputs)
    checkpoints = finetune_checkpoints(config, key)
    if is_finished(stage_dir(config, "finetune", key)):  # --force: redo, not resume
        shutil.rmtree(checkpoints, ignore_errors=True)
    train = decode_local(inputs["prepare"].path / "shards")
    base = base_pipeline_folder(inputs["base"])
    names = fine_tuned_generators(d)  # a mixed-pool control has no fine-tune (generate mixes it)
    # What each generator starts from and trains on: the base and all of train, except the
    # control_drop_<group> generators (their group's base, train without the group).
    # With diffusion.latent_feed = shards the latents are written as shards beside the checkpoints (kept with
    # them on a kill, so a rerun reuses them; removed with them when the stage is done).
    starts = {None: (base, train, cache_for(config, base, train, shard_root=checkpoints / "latents" / "all"))}
    for group, folder in control_base_folders(inputs["control_base"]).items():
        without = train.without_group(group)
        starts[group] = (
            folder,
            without,
            cache_for(config, folder, without, shard_root=checkpoints / "latents" / f"without-{group_slug(group)}"),
        )
    children = {name: _finetune_child(run, name, checkpoints / name, config) for name in names}
    stop = threading.Event()

    def fit(name: str) -> dict[str, Any]:
        child = children[name]
        tracking = {"uri": config.tracking_uri(), "run_id": child.run_id} if child.run_id else None
        try:
            if stop.is_set():
                raise FitInterrupted(f"fine-tune of {name} not started")
            variant = split_generator_id(name)[0]
            start, rows, cache = starts[config.dropped_group(variant)]
            result = finetune_variant(
                config,
                d.variant(variant),
                start,
                rows,
                out / name,
                tracking=tracking,
                cache=cache,
                seed=generator_seed(d, name),
                checkpoints=checkpoints / name,
            )
        except BaseException as exc:
            child.end("KILLED" if stop.is_set() or isinstance(exc, FitInterrupted) else "FAILED")
            raise
        child.log_metrics(
            {
                "fit_seconds": result["seconds"],
                "attempts": result["attempts"],
                "resumed_from_step": result["resumed_from_step"],
            }
        )
        child.end()
        return result

    parallel = parallel_fits(config, len(names))
    summary: dict[str, Any] = {"parallel_variants": parallel, "generators": len(names), "repeats": d.repeats}
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="finetune")
    futures: dict[str, Any] = {}
    try:
        futures = {name: pool.submit(fit, name) for name in names}
        results = {name: future.result() for name, future in futures.items()}  # re-raises the first failure
    except KeyboardInterrupt:
        _abort_fits(futures, [checkpoints / name for name in names], stop, request_stop)
        for name, future in futures.items():
            if future.cancelled():
                children[name].end("KILLED")
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for name, result in results.items():
        summary.update({f"{name}_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    atomic_write_json(
        out / "fingerprints.json", {name: folder_fingerprint(out / name / "pipeline" / "unet") for name in names}
    )
    # Removed by _finetune_log once the stage folder is in place (kept with diffusion.keep_checkpoints).
    summary["checkpoints"] = "" if d.keep_checkpoints else str(checkpoints)
    return summary


def _abort_fits(
    futures: Mapping[str, Any], folders: Sequence[Path], stop, request_stop, timeout_s: float = 45.0
) -> None:
    """Ctrl-C: Ray Train's own handler exists only for a fit() on the main thread, so stop ours: no
    new fit starts, the running ones are aborted through their stop files; if one has not returned
    within ``timeout_s``, disconnecting from Ray ends its wait."""
    import concurrent.futures

    stop.set()
    for future in futures.values():
        future.cancel()
    for folder in folders:
        request_stop(folder)
    _, running = concurrent.futures.wait(list(futures.values()), timeout=timeout_s)
    if running:
        import ray

        ray.shutdown()


def _finetune_child(run: RunHandle, name: str, folder: Path, config: FairSkinConfig) -> RunHandle:
    """The generator's MLflow child run: the one its checkpoints were logged to, when a rerun finds
    its id beside them (moved under this invocation's stage run), else a new one."""
    import json

    from fairskin.diffusion.variants import generator_seed
    from fairskin.io import atomic_write_json
    from fairskin.provenance import generator_tags, split_generator_id
    from fairskin.tracking import PARENT_TAG

    tags = {"fairskin.stage": "finetune", **generator_tags(name)}
    record = folder / "mlflow_run.json"
    if run.client is not None and record.is_file():
        run_id = json.loads(record.read_text())["run_id"]
        try:
            run.client.update_run(run_id, status="RUNNING")
        except Exception:  # another tracking store, or the run was deleted: start a new one
            pass
        else:
            child = RunHandle(run.client, run_id, run.experiment_id, dict(run.inherit))
            child.set_tags({**run.inherit, **tags, PARENT_TAG: run.run_id, "fairskin.resumed": "true"})
            return child
    spec = config.diffusion.variant(split_generator_id(name)[0])
    child = run.child(f"finetune-{name}", tags=tags)
    child.log_params(
        {
            **{f"variant.{k}": v for k, v in spec.model_dump().items()},
            "generator.seed": generator_seed(config.diffusion, name),
        }
    )
    if child.run_id:
        atomic_write_json(record, {"run_id": child.run_id})
    return child


def _finetune_log(run: RunHandle, result: StageResult) -> None:
    """Log the summary; then, the stage folder being complete, delete the checkpoints it no longer needs
    (run here, after the rename, so a kill never loses checkpoints of an unfinished stage)."""
    import shutil

    run.log_metrics({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
    if result.summary.get("checkpoints"):
        shutil.rmtree(result.summary["checkpoints"], ignore_errors=True)


def parallel_fits(config: FairSkinConfig, n_variants: int) -> int:
    """How many variants to fine-tune at once: ``diffusion.parallel_variants``, lowered until their
    workers leave half a CPU free, since Ray Data tasks feeding the workers need one (FIELD-NOTES)."""
    import ray

    d = config.diffusion
    per_fit = max(1, d.num_workers) * d.cpus_per_worker
    free = float(ray.cluster_resources().get("CPU", 1.0)) - 0.5
    parallel = min(d.parallel_variants, n_variants)
    while parallel > 1 and parallel * per_fit > free:
        parallel -= 1
    return parallel


register_stage(
    Stage(
        "finetune",
        reads=_finetune_reads(),
        inputs=("prepare", "base", "control_base"),
        version=2,
        reads_unless=(("diffusion.latent_feed", "memory"),),
        body=_finetune_body,
        needs_ray=True,
        log=_finetune_log,
    )
)


# --------------------------------------------------------------------------- generate

# The settings a pool's bytes depend on (cpus_per_actor sets each item's thread count); not the judge's,
# FID's or the actor count, which a changed value must not make the pools be generated again for.
GENERATE_READS = tuple(
    f"generation.{field}"
    for field in (
        "images_per_subclass",
        "guidance_scale",
        "inference_steps",
        "scheduler",
        "batch_size",
        "dtype",
        "channels_last",
        "use_gpu",
        "cpus_per_actor",
    )
) + (
    "diffusion.variants",
    "diffusion.custom_variants",
    "diffusion.repeat_seeds",
    "diffusion.prompt_template",
    "data.image_size",
    "data.groups",
    "data.diseases",
)


def _generate_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """Each generator's pool (P images per subclass) on a Ray actor pool; ``provenance.json`` holds
    each pool's content fingerprint beside its fine-tune's.

    Items are written to a work folder named by the stage key, outside the stage's temporary
    folder, so a killed run resumes with the items it had finished; complete pools are then
    moved into the stage folder.
    """
    import json
    import os
    import shutil

    from fairskin.diffusion.generate import generate_pools
    from fairskin.stages import stages_root

    key = pipeline_stage_key("generate", config, inputs)
    work = stages_root(config) / f"generate-{key}.work"
    from fairskin.diffusion.variants import fine_tuned_generators
    from fairskin.io import atomic_write_json
    from fairskin.provenance import shard_fingerprint

    pipelines = {g: inputs["finetune"].path / g / "pipeline" for g in fine_tuned_generators(config.diffusion)}
    started = time.time()
    images = {"count": 0}

    def on_item(entry: Mapping[str, Any]) -> None:
        images["count"] += entry["rows"]

    folders = generate_pools(config, pipelines, work, on_item=on_item)
    folders.update(_mixed_pools(config, folders, work))
    seconds = time.time() - started
    for variant, folder in folders.items():
        os.replace(folder, out / variant)
        _pool_preview(config, out / variant, variant)
    shutil.rmtree(work, ignore_errors=True)
    finetuned = json.loads((inputs["finetune"].path / "fingerprints.json").read_text())
    atomic_write_json(
        out / PROVENANCE_FILE,
        {g: {"pool": shard_fingerprint(out / g), "finetune": finetuned.get(g, "")} for g in folders},
    )
    return {
        "images_generated": images["count"],
        "generate_seconds": seconds,
        "images_per_s": images["count"] / seconds if seconds > 0 else 0.0,
    }


def _mixed_pools(config: FairSkinConfig, folders: Mapping[str, Path], work: Path) -> dict[str, Path]:
    """Each ``control_mix_<group>_<pct>`` generator's pool, mixed from the same repeat's vanilla and
    ``control_drop_<group>`` pools (:func:`fairskin.diffusion.mix_pool.mix_pool`); kept when already made."""
    import shutil

    from fairskin.config import CONTROL_DROP_PREFIX, group_slug, is_mix_control, parse_mix_control
    from fairskin.data.shards import INDEX_FILE, Vocabulary
    from fairskin.diffusion.mix_pool import mix_pool
    from fairskin.diffusion.variants import generator_seed, generators
    from fairskin.provenance import generator_id, split_generator_id

    out = {}
    for name in generators(config.diffusion):
        variant, repeat = split_generator_id(name)
        if not is_mix_control(variant):
            continue
        slug, pct = parse_mix_control(variant)
        folder = work / name
        if not (folder / INDEX_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            group = next(g for g in config.data.group_names if group_slug(g) == slug)
            mix_pool(
                folders[generator_id("vanilla", repeat)],
                folders[generator_id(CONTROL_DROP_PREFIX + slug, repeat)],
                folder,
                generator=name,
                group=group,
                fraction=pct / 100,
                seed=generator_seed(config.diffusion, name),
                vocab=Vocabulary(tuple(config.data.group_names), tuple(config.data.diseases)),
            )
        out[name] = folder
    return out


def _pool_preview(config: FairSkinConfig, folder: Path, variant: str) -> None:
    """The first pool image of every subclass as a grid PNG (``preview.png`` beside the shards)."""
    from fairskin.data.shards import load_decoded
    from fairskin.metrics.plots import save_image_grid

    pixels, meta = load_decoded(folder, verify=False)
    groups, diseases = config.data.group_names, config.data.diseases
    first = meta.groupby(["group", "disease"]).head(1)
    lookup = {(r.group, r.disease): i for i, r in zip(first.index, first.itertuples())}
    images = [pixels[lookup[(g, d)]] for g in groups for d in diseases]
    save_image_grid(
        images, groups, diseases, folder / "preview.png", title=f"pool of {variant}: one image per subclass"
    )


def _generate_log(run: RunHandle, result: StageResult) -> None:
    run.log_metrics(result.summary)
    for preview in sorted(result.path.glob("*/preview.png")):
        run.log_artifact(preview, f"generate/{preview.parent.name}")


PROVENANCE_FILE = "provenance.json"


def pool_folders(result: StageResult) -> dict[str, Path]:
    """generator id (``vanilla``, ``vanilla-r1``, ...) -> pool shard folder of a finished ``generate`` stage."""
    return {p.parent.name: p.parent for p in sorted(result.path.glob("*/index.json"))}


def pool_provenance(result: StageResult) -> dict[str, dict[str, str]]:
    """generator id -> {"pool": fingerprint, "finetune": fingerprint} of a finished ``generate`` stage."""
    import json

    path = result.path / PROVENANCE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from fairskin.provenance import shard_fingerprint

    return {g: {"pool": shard_fingerprint(folder), "finetune": ""} for g, folder in pool_folders(result).items()}


def check_pool_size(config: FairSkinConfig, real_shards: Path) -> None:
    """Refuse a pool size P (``generation.images_per_subclass``) that the pipeline's search space
    (``tune.space``, counts scaled by ``tune.count_scale``) would ask more of, before generating.

    Raises :class:`ConfigError` naming the field, P and the space's own message (which names the
    parameter and its largest valid value).
    """
    from fairskin.tune.spaces import SpaceError, resolve_space
    from fairskin.tune.study import train_counts

    per_subclass = config.generation.images_per_subclass
    subclasses = [(g, d) for g in config.data.group_names for d in config.data.diseases]
    from fairskin.diffusion.variants import generators

    pools = {v: dict.fromkeys(subclasses, per_subclass) for v in generators(config.diffusion)}
    space = pipeline_space(config)
    try:
        resolve_space(space, config, pools, train_counts(real_shards))
    except SpaceError as exc:
        raise ConfigError(
            f"generation.images_per_subclass = {per_subclass} is too small for the tune stage's "
            f"space {space.name!r}: {exc}"
        ) from None


register_stage(
    Stage(
        "generate",
        reads=GENERATE_READS,
        inputs=("finetune",),
        body=_generate_body,
        needs_ray=True,
        version=2,
        log=_generate_log,
        check=lambda config, prepare: check_pool_size(config, prepare.path / "shards"),
        check_after="prepare",
    )
)


# --------------------------------------------------------------------------- judge

JUDGE_READS = (
    "data",
    "classifier",
    "generation.judge_images_per_subclass",
    "generation.judge_batch_size",
    "runtime.seed",
)


def _judge_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """The disease-fidelity judge, a classifier that never saw the FID reference images
    (:mod:`fairskin.classify.judge`). synthetic: trained on a fresh balanced procedural set (seed
    namespace ``judge``), tested on the prepare stage's val + test images; it also gives the
    evaluate stage its feature space. fitzpatrick17k: records that the reference classifier is
    reused (it saw the train images; its real baseline is the test split)."""
    from fairskin.classify.judge import judge_info, train_judge

    info = judge_info(config.data.source)
    if info.kind != "independent":
        info.write(out)
        return {"judge_saw_train_images": 1}
    return train_judge(config, out, inputs["prepare"].path / "shards")


def _judge_log(run: RunHandle, result: StageResult) -> None:
    from fairskin.classify.judge import IDS_FILE, JUDGE_FILE, REAL_ACCURACY_FILE, JudgeInfo

    run.log_metrics({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
    run.set_tags({"fairskin.judge": JudgeInfo.read(result.path).description})
    for name in (JUDGE_FILE, IDS_FILE, REAL_ACCURACY_FILE, "history.csv", "test_report.json"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "judge")


register_stage(Stage("judge", reads=JUDGE_READS, inputs=("prepare",), body=_judge_body, log=_judge_log))


# --------------------------------------------------------------------------- evaluate


def _evaluate_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """Per variant: FID/KID per subclass and group with their real-vs-real floors, pooled FIDs, FID
    variance, IS, memorisation, disease fidelity (the judge), skin tone, t-SNE, heatmaps.

    Feature space: Inception with local weights, else on synthetic data the independent judge's
    (it never saw the real images), else the reference classifier's. Writes
    ``generation_table.csv`` (one row per variant), ``per_subclass.csv`` (variant x subclass) and,
    per variant, ``<variant>/`` with its table and plots; each variant is a child run tagged
    ``fairskin.variant``.
    """
    import json

    import numpy as np
    import pandas as pd

    from fairskin.classify.judge import load_judge
    from fairskin.classify.models import load_saved_classifier
    from fairskin.classify.train import classifier_device
    from fairskin.data.shards import load_decoded
    from fairskin.metrics.generation import (
        classifier_features,
        disease_fidelity,
        feature_space,
        generation_report,
        judge_accuracy,
        judge_predictions,
    )
    from fairskin.metrics.plots import plot_fid_heatmap, plot_tsne
    from fairskin.metrics.skin_tone import ReferenceBands, image_ita, skin_tone_report
    from fairskin.progress import progress_bar
    from fairskin.provenance import TAG_FINETUNE, TAG_POOL, TAG_REAL, shard_fingerprint

    g, c = config.generation, config.classifier
    groups, diseases = config.data.group_names, config.data.diseases
    shards = inputs["prepare"].path / "shards"
    device = classifier_device(c)
    model = load_saved_classifier(inputs["reference"].path / "model").to(device).eval()
    judge, info = load_judge(inputs["judge"].path, inputs["reference"].path)
    judge = judge.to(device)
    space = feature_space(
        judge if info.kind == "independent" else model,
        c.image_size,
        g.inception_weights_path,
        kind="judge-classifier" if info.kind == "independent" else "reference-classifier",
    )
    train_pixels, train_meta = load_decoded(shards, splits=["train"])
    real_pixels, real_meta = (
        (train_pixels, train_meta) if g.real_split == "train" else load_decoded(shards, splits=[g.real_split])
    )
    held_pixels, held_meta = load_decoded(shards, splits=["val", "test"])
    # Floors: real images outside the FID reference (and outside the generators' training split).
    floor_splits = [s for s in ("val", "test") if s != g.real_split]
    floor_rows = held_meta["split"].isin(floor_splits).to_numpy()
    floor_pixels, floor_meta = held_pixels[floor_rows], held_meta[floor_rows].reset_index(drop=True)
    # Disease fidelity: the judge on its real baseline, once.
    judge_rows = held_meta["split"].isin(info.real_splits).to_numpy()
    judge_real = judge_accuracy(
        judge_predictions(judge, held_pixels[judge_rows], c.image_size, diseases),
        held_meta[judge_rows],
        groups,
        diseases,
    )
    judge_real.to_csv(out / "judge_real_accuracy.csv", index=False)
    cache = config.runtime.runs_root / "cache" / "fidelity"  # real features, keyed by image checksums

    # Skin tone: ITA of each image's healthy skin against the real training images' ITA per group;
    # held-out real images give the same rule's ceiling.
    bands = ReferenceBands.from_real(image_ita(train_pixels), train_meta["group"].to_numpy())
    held_ita = image_ita(held_pixels)
    rows, tables = [], []
    pools = pool_folders(inputs["generate"])
    provenance = pool_provenance(inputs["generate"])
    real_fingerprint = shard_fingerprint(shards)
    for variant, folder in progress_bar(
        pools.items(),
        total=len(pools),
        enabled=config.runtime.progress,
        description="evaluate: FID/KID/IS, floors, fidelity, t-SNE per generator",
    ):
        pool_pixels, pool_meta = load_decoded(folder)
        report = generation_report(
            pool_pixels,
            pool_meta,
            real_pixels,
            real_meta,
            groups,
            diseases,
            space,
            cache_root=cache,
            heldout_pixels=held_pixels,
            heldout_meta=held_meta,
            train_pixels=train_pixels,
            train_meta=train_meta,
            floor_pixels=floor_pixels,
            floor_meta=floor_meta,
            seed=config.runtime.seed,
        )
        fidelity, fidelity_summary = disease_fidelity(
            judge_accuracy(judge_predictions(judge, pool_pixels, c.image_size, diseases), pool_meta, groups, diseases),
            judge_real,
            groups,
        )
        report.per_subclass = report.per_subclass.merge(fidelity, on=["group", "disease"], how="left")
        report.summary.update(fidelity_summary)
        report.summary.update(judge=info.description, judge_saw_train_images=int(info.saw_train_images))
        tone_subclass, tone_group, tone_summary, confusion = skin_tone_report(
            image_ita(pool_pixels),
            pool_meta["group"].to_numpy(),
            pool_meta["disease"].to_numpy(),
            bands,
            held_ita,
            held_meta["group"].to_numpy(),
            heldout_disease=held_meta["disease"].to_numpy(),
            seed=config.runtime.seed,
        )  # W1 ratios: the reference is bands.samples, the train split's ITAs
        report.summary.update(tone_summary)
        (out / variant).mkdir(parents=True, exist_ok=True)
        tone_subclass.to_csv(out / variant / "skin_tone_per_subclass.csv", index=False)
        tone_group.to_csv(out / variant / "skin_tone_per_group.csv", index=False)
        confusion.to_csv(out / variant / "skin_tone_confusion.csv")
        plot_fid_heatmap(
            tone_subclass,
            out / variant / "skin_tone_heatmap.png",
            value="agreement",
            title=f"{variant}: skin-tone agreement per subclass (share assigned to the prompted group)",
        )
        report.per_subclass.to_csv(out / variant / "per_subclass.csv", index=False)
        (out / variant / "summary.json").write_text(json.dumps(report.summary, indent=2, default=str))
        plot_fid_heatmap(
            report.per_subclass,
            out / variant / "fid_heatmap.png",
            title=f"{variant}: FID per subclass ({space.kind} features)",
        )
        plot_fid_heatmap(
            report.per_subclass,
            out / variant / "disease_fidelity_heatmap.png",
            value="disease_fidelity",
            title=f"{variant}: disease fidelity per subclass (judge accuracy, generated / held-out real)"
            + ("; judge saw the train images" if info.saw_train_images else ""),
        )
        features = classifier_features(model, pool_pixels, c.image_size)
        plot_tsne(
            features,
            pool_meta["group"].to_numpy(),
            pool_meta["disease"].to_numpy(),
            out / variant / "tsne.png",
            title=f"{variant}: t-SNE of reference-classifier features",
            seed=config.runtime.seed,
        )
        rows.append({"variant": variant, **report.summary})
        tables.append(report.per_subclass.assign(variant=variant))
        _log_variant_evaluation(
            run,
            variant,
            report.summary,
            out / variant,
            {
                TAG_POOL: provenance[variant]["pool"],
                TAG_FINETUNE: provenance[variant]["finetune"],
                TAG_REAL: real_fingerprint,
            },
        )
    table = pd.DataFrame(rows)
    table.to_csv(out / "generation_table.csv", index=False)
    pd.concat(tables, ignore_index=True).to_csv(out / "per_subclass.csv", index=False)
    (out / "generation_table.md").write_text(_generation_markdown(table, pd.concat(tables), config))
    numeric = {
        f"{r['variant']}_{k}": float(v)
        for r in rows
        for k, v in r.items()
        if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
    }
    return numeric


def _log_variant_evaluation(
    run: RunHandle, generator: str, summary: Mapping[str, Any], folder: Path, fingerprints: Mapping[str, str]
) -> None:
    from fairskin.provenance import generator_tags

    child = run.child(
        f"evaluate-{generator}",
        tags={
            "fairskin.stage": "evaluate",
            **generator_tags(generator),
            "fairskin.feature_extractor": summary["feature_extractor"],
            "fairskin.judge": summary.get("judge", ""),
            **fingerprints,
        },
    )
    child.log_metrics(
        {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    for path in sorted(folder.iterdir()):
        child.log_artifact(path, "evaluate")
    child.end()


def _generation_markdown(table, per_subclass, config: FairSkinConfig) -> str:
    """Variant table, Table 2's pooled FIDs, and a per-subclass table (FID / KID with floors,
    disease fidelity), as markdown; every table names the feature space and the judge."""
    groups = config.data.group_names
    first = table.iloc[0]
    judge = f"Judge (disease fidelity): {first.get('judge', 'n/a')}."
    space = f"Feature space: {first['feature_extractor']}."

    def fmt(value, spec: str = ".4g") -> str:
        try:
            return format(float(value), spec)
        except (TypeError, ValueError):
            return str(value)

    def grid(cols: list[str], frame, head: list[str] | None = None, spec: str = ".4g") -> list[str]:
        out = ["| " + " | ".join(head or cols) + " |", "|" + "---|" * len(cols)]
        for _, r in frame.iterrows():
            out.append(
                "| "
                + " | ".join(
                    str(r.get(c, ""))
                    if c in ("variant", "group", "disease", "floor_method")
                    else fmt(r.get(c, float("nan")), spec)
                    for c in cols
                )
                + " |"
            )
        return out

    cols = [
        "variant",
        "fid_mean",
        "fid_floor_mean",
        "fid_var_subclass",
        "fid_var_subclass_floor_corrected",
        "fid_var_group",
        "kid_mean",
        "kid_floor_mean",
        "is_mean",
        "memorised_fraction",
        "disease_fidelity",
        "disease_fidelity_worst_group",
        "judge_accuracy_generated",
        "judge_accuracy_real",
    ]
    lines = [
        "# Generation metrics",
        "",
        f"{space} {judge} FID variance is the sample variance (ddof=1) over the "
        "subclasses and over the groups; `_floor` figures are the real-vs-real floor (held-out real images "
        "against the same reference at the same N: what a perfect generator would score; FID is biased upwards "
        "at small N, KID is not); `floor_corrected` subtracts each subclass's floor first. Disease fidelity = "
        "the judge's accuracy on generated images / on held-out real images (mean over subclasses).",
        "",
    ]
    lines += grid(cols, table)
    pooled = ["variant", *[f"fid_pooled_{g}" for g in groups], "fid_pooled_overall", *[f"fid_{g}" for g in groups]]
    lines += [
        "",
        "## Table 2: FID per group",
        "",
        f"{space} {judge} `fid_pooled_<group>`: the group's generated images pooled over diseases (subsampled, "
        "seeded, to the real disease mix of the group) against all its real images; `fid_pooled_overall`: every "
        "image, no subcategory distinction, (group, disease) mix matched; `fid_<group>`: the count-weighted "
        "mean of the group's subclass FIDs.",
        "",
    ]
    lines += grid(pooled, table)
    sub = [
        "variant",
        "group",
        "disease",
        "fid",
        "fid_floor",
        "kid_mean",
        "kid_floor",
        "floor_method",
        "disease_fidelity",
        "judge_accuracy_generated",
        "judge_accuracy_real",
        "n_generated",
        "n_real",
        "n_judge_real",
    ]
    lines += ["", "## Per subclass", "", f"{space} {judge}", ""]
    lines += grid(sub, per_subclass, spec=".4g")
    return "\n".join(lines) + "\n"


def _evaluate_log(run: RunHandle, result: StageResult) -> None:
    run.log_metrics(result.summary)
    for name in ("generation_table.csv", "generation_table.md", "per_subclass.csv", "judge_real_accuracy.csv"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "evaluate")


register_stage(
    Stage(
        "evaluate",
        reads=("generation.real_split", "generation.inception_weights_path", "classifier.image_size", "runtime.seed"),
        version=3,
        inputs=("prepare", "reference", "generate", "judge"),
        body=_evaluate_body,
        log=_evaluate_log,
        external=("generation.inception_weights_path",),
    )
)


# --------------------------------------------------------------------------- tune

# Tune fields in the stage's key only when set: unset, the key is what it was before they existed.
TUNE_READS_UNLESS = (("tune.confirm_max_points", None),)


def _tune_reads() -> tuple[str, ...]:
    """Every tune field but ``max_failures`` (retries change how a study copes, not what it finds) and those
    in ``TUNE_READS_UNLESS``."""
    from fairskin.config import TuneConfig

    skip = {"max_failures"} | {path.split(".", 1)[1] for path, _ in TUNE_READS_UNLESS}
    return tuple(f"tune.{f}" for f in TuneConfig.model_fields if f not in skip) + ("classifier", "runtime.seed")


TUNE_READS = _tune_reads()


def pipeline_space(config: FairSkinConfig):
    """The space the ``tune`` stage runs (``tune.space``, default ``ablation``), with
    ``tune.train_seeds`` (when set) replacing its training seeds by 0 .. N-1."""
    from fairskin.tune.spaces import load_space

    space = load_space(config.tune.space)
    if config.tune.train_seeds is not None:
        seeds = space.seeds.model_copy(update={"train": list(range(config.tune.train_seeds))})
        space = space.model_copy(update={"seeds": seeds})
    return space


def _tune_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """One study of ``tune.space`` over every variant's pool (Ray Tune + Optuna, MLflow parent + children).

    The study folder lives under ``<runs root>/tune/`` and is named by the stage key, so a
    killed pipeline resumes the same study (finished trials are not rerun).
    """
    import shutil

    from fairskin.io import atomic_write_json
    from fairskin.tune.study import STUDY_FILE, run_study, study_dir

    space = pipeline_space(config)
    key = pipeline_stage_key("tune", config, inputs)
    name = f"{space.name}-{config.preset}-{key}"
    resume = (study_dir(config, name) / STUDY_FILE).exists()
    result = run_study(
        config,
        space,
        pool_folders(inputs["generate"]),
        inputs["prepare"].path / "shards",
        name=name,
        resume=resume,
        echo=print,
        tags={TAG_PIPELINE: run.inherit.get(TAG_PIPELINE, "")},
    )
    if result.interrupted:
        raise RuntimeError(f"study {name} was interrupted; rerun the pipeline to resume it")
    report = result.path / "report"
    if report.is_dir():
        shutil.copytree(report, out / "study_report")
    result.trials.to_csv(out / "trials.csv", index=False)
    atomic_write_json(
        out / "study.json",
        {
            "study": name,
            "path": str(result.path),
            "experiment_id": result.experiment_id,
            "parent_run_id": result.parent_run_id,
        },
    )
    run.set_tags({"fairskin.study": name, "fairskin.study_parent_run": result.parent_run_id})
    finished = result.trials[result.trials["state"] == "finished"] if "state" in result.trials else result.trials
    return {"trials": len(result.trials), "trials_finished": len(finished), "study_seconds": result.seconds}


def study_of(result: StageResult) -> str:
    """The study name a finished ``tune`` stage ran."""
    import json

    return json.loads((result.path / "study.json").read_text())["study"]


register_stage(
    Stage(
        "tune",
        reads=TUNE_READS,
        reads_unless=TUNE_READS_UNLESS,
        inputs=("prepare", "generate"),
        body=_tune_body,
        needs_ray=True,
        external=("classifier.model", "tune.space_content"),
        log=lambda run, result: run.log_metrics(result.summary),
    )
)


# --------------------------------------------------------------------------- report


def _report_body(
    config: FairSkinConfig, out: Path, inputs: Mapping[str, StageResult], run: RunHandle
) -> Mapping[str, Any]:
    """Table 1, Table 2 and the figures, rebuilt from MLflow for the pipeline's study."""
    from fairskin.report import build_report

    r = config.report
    report = build_report(
        config.tracking_uri(),
        out,
        config.data.group_names,
        study=study_of(inputs["tune"]),
        baseline=r.baseline,
        level=r.level,
        declaration=config.declaration(),
    )
    counts = report.verdicts["verdict"].value_counts() if len(report.verdicts) else {}
    return {
        "rows_table1": len(report.table1),
        "figures": len(report.figures),
        "figures_missing": len(report.missing),
        **{
            f"verdicts_{v}": int(counts.get(v, 0))
            for v in ("better", "worse", "equivalent", "inconclusive", "untestable")
        },
    }


def _report_log(run: RunHandle, result: StageResult) -> None:
    run.log_metrics(result.summary)
    for path in sorted(result.path.iterdir()):
        if path.suffix in (".md", ".csv", ".png"):
            run.log_artifact(path, "report")


register_stage(
    Stage(
        "report",
        reads=("data.groups", "report"),
        inputs=("reference", "evaluate", "tune"),
        version=2,
        body=_report_body,
        log=_report_log,
    )
)


def report_path(result: StageResult) -> Path:
    return result.path / "report.md"


# --------------------------------------------------------------------------- running

# The run order (each stage after its inputs). reference and judge need only prepare: they come after
# base so that they run while base's UNet, a background Ray task of one CPU, trains beside them.
RUN_ORDER = (
    "prepare",
    "vae",
    "base",
    "control_base",
    "reference",
    "judge",
    "finetune",
    "generate",
    "evaluate",
    "tune",
    "report",
)
assert set(RUN_ORDER) == set(STAGES), f"RUN_ORDER {RUN_ORDER} must name every stage {list(STAGES)}"
STAGES = {name: STAGES[name] for name in RUN_ORDER}


@dataclass
class PipelineRun:
    """What one invocation did: each stage's result and the tracking handles."""

    results: dict[str, StageResult] = field(default_factory=dict)
    parent_run_id: str = ""
    tracker: Tracker | None = None


def _ordered(names: Sequence[str] | None, config: FairSkinConfig) -> list[Stage]:
    chosen = list(STAGES) if not names else list(names)
    unknown = [n for n in chosen if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    order = list(STAGES)
    stages = [STAGES[n] for n in sorted(chosen, key=order.index)]
    return [s for s in stages if s.presets is None or config.preset in s.presets]


def _with_inputs(stages: list[Stage]) -> list[Stage]:
    """Add every stage the chosen ones depend on, in pipeline order."""
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name in needed:
            return
        needed.add(name)
        for dep in STAGES[name].inputs:
            visit(dep)

    for s in stages:
        visit(s.name)
    return [STAGES[n] for n in STAGES if n in needed]


def forced_stages(plan: Sequence[Stage], force: Sequence[str]) -> set[str]:
    """The stages of ``plan`` to recompute: those named in ``force`` and every stage of the plan that
    depends on one of them (directly or through others); ``"all"``: every stage."""
    if "all" in force:
        return {s.name for s in plan}
    forced = set(force)
    for stage in plan:  # pipeline order: inputs come first
        if forced.intersection(stage.inputs):
            forced.add(stage.name)
    return forced & {s.name for s in plan}


def run_in_order(plan: Sequence[Stage], run_one: Callable[[Stage], None]) -> None:
    """Call ``run_one(stage)`` for each stage of ``plan`` (pipeline order). A ``background`` stage runs on a
    thread while the next stages go on; a stage that takes it as input waits for it first. When anything
    fails, the stages still running are waited for (what they finish is kept, so a rerun skips it) and the
    first error is raised. On an interrupt (Ctrl-C, SIGTERM) they are told to stop instead
    (:data:`fairskin.runtime.background_stop`), and their unfinished work is dropped."""
    from fairskin.runtime import background_stop

    background_stop.clear()
    running: dict[str, Any] = {}
    with ThreadPoolExecutor(
        max_workers=max(1, sum(s.background for s in plan)), thread_name_prefix="fairskin-stage"
    ) as pool:
        try:
            for stage in plan:
                for name in stage.inputs:
                    if name in running:
                        running.pop(name).result()
                if stage.background:
                    running[stage.name] = pool.submit(run_one, stage)
                else:
                    run_one(stage)
        except (KeyboardInterrupt, SystemExit):
            background_stop.set()
            raise
        finally:
            errors = []
            for future in running.values():
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001 - the main path's error, if any, comes first
                    errors.append(exc)
        if errors:
            raise errors[0]


@holding_runs_root
def run_pipeline(
    config: FairSkinConfig,
    stages: Sequence[str] | None = None,
    force: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> PipelineRun:
    """Run the chosen stages (default: all) and the stages they need; ``force`` names stages to redo,
    and every stage of this run downstream of one is redone too (``force=["all"]``: every stage).

    The runs root is locked for the call (:mod:`fairskin.lock`; re-entrant in one process), and
    the MLflow store is opened (a SQLite schema created) under that lock before anything else writes.
    """
    plan = _with_inputs(_ordered(stages, config))
    force_set = set(force)
    unknown = force_set - set(STAGES) - {"all"}
    if unknown:
        raise ValueError(f"--force names unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    force_set = forced_stages(plan, sorted(force_set))
    tracker = Tracker.from_config(config)
    outcome = PipelineRun(tracker=tracker)
    config.runtime.runs_root.mkdir(parents=True, exist_ok=True)
    dump_config(config, config.runtime.runs_root / "last_config.yaml")
    tags = {"fairskin.kind": "pipeline", "fairskin.preset": config.preset}
    with tracker.run(f"pipeline-{config.preset}", tags=tags) as parent:
        outcome.parent_run_id = parent.run_id
        parent.inherit = {TAG_PIPELINE: parent.run_id}  # every run below carries it (provenance)
        parent.set_tags({TAG_PIPELINE: parent.run_id})
        parent.log_config(config)
        record_environment(parent)  # engine version, git commit, installed packages (reproducibility)

        def run_one(stage: Stage) -> None:
            inputs = {name: outcome.results[name] for name in stage.inputs}
            external = external_fingerprints(stage, config)
            reads = stage.reads_for(config)
            key = stage_key(stage.name, config, reads, inputs, stage.version, external)
            parent.set_tags({f"fairskin.key.{stage.name}": key})
            echo(f"[{stage.name}] ...")
            with tracker.run(
                stage.name, parent=parent, tags={"fairskin.stage": stage.name, TAG_STAGE_KEY: key, **tags}
            ) as child:
                child.inherit[TAG_STAGE_KEY] = key
                started = time.time()
                result = run_stage(
                    config,
                    stage.name,
                    reads,
                    lambda out, s=stage, i=inputs, r=child: s.body(config, out, i, r),
                    inputs=inputs,
                    force=stage.name in force_set,
                    version=stage.version,
                    external=external,
                )
                elapsed = time.time() - started
                child.log_params(
                    {
                        "stage.key": result.key,
                        "stage.path": str(result.path),
                        **{f"external.{k}": v for k, v in external.items()},
                        **{f"reads.{k}": v for k, v in flatten({p: config.section(p) for p in reads}).items()},
                    }
                )
                child.set_tags({"fairskin.skipped": result.skipped})
                child.log_metrics({"stage_seconds": elapsed})
                if stage.name == "prepare":
                    from fairskin.provenance import TAG_REAL, shard_fingerprint

                    parent.inherit[TAG_REAL] = shard_fingerprint(result.path / "shards")
                    parent.set_tags({TAG_REAL: parent.inherit[TAG_REAL]})
                    child.set_tags({TAG_REAL: parent.inherit[TAG_REAL]})
                if stage.log is not None:
                    stage.log(child, result)
            outcome.results[stage.name] = result
            for later in plan:
                if later.check is not None and later.check_after == stage.name:
                    later.check(config, result)
            state = "skipped (already done)" if result.skipped else f"done in {elapsed:.1f} s"
            echo(f"[{stage.name}] {state}: {result.path}")

        if any(stage.needs_ray for stage in plan):
            from fairskin.runtime import init_ray

            init_ray(config)  # here, not in a background stage's thread
        run_in_order(plan, run_one)
        outcome.results = {stage.name: outcome.results[stage.name] for stage in plan}
    return outcome
