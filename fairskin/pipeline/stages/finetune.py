"""The ``finetune`` stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import EXTERNAL, Stage, StageContext, register_stage
from fairskin.pipeline.stages.base import base_pipeline_folder
from fairskin.pipeline.stages.control_base import control_base_folders
from fairskin.tracking import RunHandle

# What the fine-tune's result depends on: every diffusion field but these, so a rerun with more
# retries, another concurrency, another placement, kept checkpoints or the other trainer (one worker's loop,
# in Ray Train or in process: the same weights) resumes the same checkpoints (same key).
# feed_memory_budget_mb sizes the shard feed's reads, not its draws; latent_feed is in the key when not "memory".
_FINETUNE_IGNORES = (
    "max_failures",
    "parallel_variants",
    "trainer",
    "keep_checkpoints",
    "placement_strategy",
    "feed_memory_budget_mb",
    "latent_feed",
    "max_repeats",
    "repeat_batch",
)


def _finetune_reads() -> tuple[str, ...]:
    from fairskin.config import DiffusionConfig

    return tuple(f"diffusion.{f}" for f in DiffusionConfig.model_fields if f not in _FINETUNE_IGNORES)


def finetune_checkpoints(config: FairSkinConfig, key: str) -> Path:
    """``<runs root>/checkpoints/finetune-<key>``: one folder per generator, outside the stage's
    temporary folder, so a killed or interrupted stage resumes from them."""
    return config.runtime.runs_root / "checkpoints" / f"finetune-{key}"


def _finetune_body(ctx: StageContext) -> Mapping[str, Any]:
    """Fine-tune every generator (variant x repeat, ``diffusion.variants`` x ``diffusion.repeat_seeds``)
    from the base on Ray Train, each a child run; writes ``<generator>/pipeline`` and
    ``fingerprints.json`` (generator -> fingerprint of its fine-tuned UNet, or of the base UNet and its adapter).

    A generator already in the store (:mod:`fairskin.pipeline.store`: made by an earlier stage key, e.g. before a
    batch of repeats was added) is linked, not fine-tuned again. Each other generator checkpoints into
    ``finetune_checkpoints(config, key) / <generator>`` and keeps its MLflow child run id there: a rerun after a
    kill continues both. On Ctrl-C the running fits are aborted (their runs marked KILLED, their checkpoints kept)
    and KeyboardInterrupt propagates.
    """
    config, out, inputs, run = ctx.config, ctx.out, ctx.inputs, ctx.run
    import shutil
    import threading

    from fairskin.data.stream import decode_local
    from fairskin.diffusion.finetune import FitInterrupted
    from fairskin.diffusion.variants import fine_tuned_generators
    from fairskin.io import atomic_write_json
    from fairskin.pipeline.stage import STAGES
    from fairskin.pipeline.store import generator_folders, link_stored, stored_record

    d = config.diffusion
    checkpoints = ctx.resume
    if ctx.redo:  # --force over a finished stage: redo, not resume
        shutil.rmtree(checkpoints, ignore_errors=True)
    names = fine_tuned_generators(d)  # a mixed-pool control has no fine-tune (generate mixes it)
    stage = STAGES["finetune"]
    stored = generator_folders(config, names, stage.reads_for(config), inputs, stage.version, redo=ctx.redo)
    todo = [n for n in names if stored_record(stored[n]) is None]
    train = decode_local(inputs["prepare"].path / "shards")
    base = base_pipeline_folder(inputs["base"])
    # What each generator starts from and trains on: the base and all of train, except the
    # control_drop_<group> generators (their group's base, train without the group).
    # With diffusion.latent_feed = shards the latents are written as shards beside the checkpoints (kept with
    # them on a kill, so a rerun reuses them; removed with them when the stage is done).
    starts = _starts(config, base, train, control_base_folders(inputs["control_base"]), checkpoints / "latents")
    children = {name: _finetune_child(run, name, checkpoints / name, config) for name in todo}
    stop = threading.Event()

    def fit(name: str) -> dict[str, Any]:
        child = children[name]
        try:
            if stop.is_set():
                raise FitInterrupted(f"fine-tune of {name} not started")
            result = _fit_into_store(config, name, starts, stored[name], child, checkpoints / name)
        except BaseException as exc:
            child.end("KILLED" if stop.is_set() or isinstance(exc, FitInterrupted) else "FAILED")
            raise
        child.log_metrics(
            {k: result[k] for k in ("attempts", "resumed_from_step")} | {"fit_seconds": result["seconds"]}
        )
        child.end()
        return result

    parallel = parallel_fits(config, len(todo)) if todo else 0
    summary: dict[str, Any] = {
        "parallel_variants": parallel,
        "generators": len(names),
        "generators_fitted": len(todo),
        "generators_reused": len(names) - len(todo),
        "repeats": d.repeats,
    }
    results = _fit_all(ctx, fit, todo, parallel, stop, children) if todo else {}
    for name, result in results.items():  # the fits of this stage only: the planner's cost per fine-tune reads them
        summary.update({f"{name}_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    records = link_stored(out, stored)
    atomic_write_json(out / "fingerprints.json", {name: record["fingerprint"] for name, record in records.items()})
    # Removed by _finetune_log once the stage folder is in place (kept with diffusion.keep_checkpoints).
    summary["checkpoints"] = "" if d.keep_checkpoints else str(checkpoints)
    return summary


def _fit_into_store(
    config: FairSkinConfig, name: str, starts: Mapping, folder: Path, child: RunHandle, checkpoints: Path
) -> dict[str, Any]:
    """Fine-tune generator ``name`` into its store ``folder`` (a temporary name, renamed once its pipeline, its
    method-state figure and its record are written): :func:`fairskin.diffusion.finetune.finetune_variant`'s
    result. ``starts``: :func:`_starts`; ``child``: the generator's MLflow run; ``checkpoints``: its Ray Train
    storage (a rerun after a kill resumes from it)."""
    from fairskin.diffusion.finetune import finetune_variant
    from fairskin.diffusion.models import trained_fingerprint
    from fairskin.diffusion.variants import generator_seed
    from fairskin.io import atomic_directory, atomic_write_json
    from fairskin.pipeline.store import STORE_RECORD
    from fairskin.provenance import split_generator_id

    d = config.diffusion
    variant = split_generator_id(name)[0]
    start, rows, cache = starts[config.dropped_group(variant)]
    tracking = {"uri": config.tracking_uri(), "run_id": child.run_id} if child.run_id else None
    with atomic_directory(folder, replace=True) as tmp:
        result = finetune_variant(
            config,
            d.variant(variant),
            start,
            rows,
            tmp,
            tracking=tracking,
            cache=cache,
            seed=generator_seed(d, name),
            checkpoints=checkpoints,
        )
        _method_state_figure(child, d.variant(variant).hooks, tmp, name, config.data.group_names)
        atomic_write_json(
            tmp / STORE_RECORD, {"generator": name, "fingerprint": trained_fingerprint(tmp / "pipeline"), **result}
        )
    return result


def _starts(config: FairSkinConfig, base: Path, train, control_bases: Mapping[str, Path], latents: Path) -> dict:
    """dropped group (None: none) -> (the pipeline a generator starts from, the training set it sees, its latent
    cache): the base and all of train, except the control_drop_<group> generators (their group's base, train
    without the group). With ``diffusion.latent_feed = shards`` the latents are written as shards under
    ``latents`` beside the checkpoints (kept with them on a kill; removed with them when the stage is done)."""
    from fairskin.config import group_slug
    from fairskin.diffusion.finetune import cache_for

    starts = {None: (base, train, cache_for(config, base, train, shard_root=latents / "all"))}
    for group, folder in control_bases.items():
        without = train.without_group(group)
        shard_root = latents / f"without-{group_slug(group)}"
        starts[group] = (folder, without, cache_for(config, folder, without, shard_root=shard_root))
    return starts


def _fit_all(ctx: StageContext, fit, names: Sequence[str], parallel: int, stop, children) -> dict[str, Any]:
    """``fit(name)`` of every generator, ``parallel`` at a time, with a progress line per finished one; on
    Ctrl-C the running fits are aborted (their runs KILLED, their checkpoints kept) and the interrupt re-raised."""
    from fairskin.diffusion.finetune import request_stop

    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="finetune")
    futures: dict[str, Any] = {}
    try:
        futures = {name: pool.submit(fit, name) for name in names}
        reporter = ctx.progress("finetune", len(names))  # each generator's steps go to its own child run
        for done, future in enumerate(as_completed(futures.values()), start=1):
            fit_seconds = future.result()["seconds"]  # re-raises the first failure
            reporter.update(done, fit_seconds=fit_seconds)
        reporter.close()
        return {name: future.result() for name, future in futures.items()}
    except KeyboardInterrupt:
        _abort_fits(futures, [ctx.resume / name for name in names], stop, request_stop)
        for name, future in futures.items():
            if future.cancelled():
                children[name].end("KILLED")
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


def _method_state_figure(
    child: RunHandle, hooks: Mapping[str, Any], folder: Path, name: str, groups: Sequence[str]
) -> Path | None:
    """The metrics the method's hooks logged at every step (named ``<hook>_...``: FairDiffusion's sigma per group
    and its y) drawn over the steps into ``folder/method_state.png`` and the child run's artifacts; None when the
    method has no hooks, logged none, or tracking is off."""
    if not hooks or child.client is None:
        return None
    from fairskin.metrics.plots import plot_method_state

    names = [k for k in child.client.get_run(child.run_id).data.metrics if k.startswith(tuple(f"{h}_" for h in hooks))]
    history = {k: [(m.step, m.value) for m in child.client.get_metric_history(child.run_id, k)] for k in names}
    history = {k: v for k, v in history.items() if v}
    if not history:
        return None
    title = f"{name}: {', '.join(hooks)} over steps"
    path = plot_method_state(history, folder / "method_state.png", title=title, groups=groups)
    child.log_artifact(path)
    return path


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
    if d.trainer == "in_process":
        return 1  # one process: its fits run one after another (torch's thread count is the process's)
    per_fit = max(1, d.num_workers) * d.cpus_per_worker
    free = float(ray.cluster_resources().get("CPU", 1.0)) - 0.5
    parallel = min(d.parallel_variants, n_variants)
    while parallel > 1 and parallel * per_fit > free:
        parallel -= 1
    return parallel


def _methods_key(config: FairSkinConfig, cache) -> str:
    """The resolved spec, module and module version of every variant's method: editing a method (or bumping
    its module's VERSION) re-keys the fine-tunes it made, and everything downstream."""
    from fairskin.methods import methods_fingerprint

    return methods_fingerprint(config.diffusion.method(name) for name in config.diffusion.variants)


EXTERNAL["diffusion.methods"] = _methods_key

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
        external=("diffusion.methods",),
        resume_dir=finetune_checkpoints,
    )
)
