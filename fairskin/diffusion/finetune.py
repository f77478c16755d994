"""Level 2 on Ray Train: the (CBDM) fine-tune of one variant, with checkpoints and resume.

Driver side (:func:`finetune_variant`): cache the frozen parts' outputs once (VAE latents of
both flips of every training image, text embeddings of the 15 prompts and the empty one),
put them in the object store, build the run's level-1 plan as a Ray dataset, and run
``train_loop_per_worker`` under a ``TorchTrainer``.

Worker side (:func:`train_loop_per_worker`), one global step per global batch of the plan:
take this rank's positions (``ids[rank::world]``), gather their latents, draw noise,
timesteps, y' and the prompt drop from generators seeded by (seed, step[, rank]) — so a
resumed run repeats exactly the randomness of the steps it re-runs — and step AdamW.
Every ``checkpoint_every`` steps rank 0 reports a checkpoint (UNet and EMA as safetensors,
optimizer and LR-scheduler state, step, and the window's step metrics) and then logs the
window's steps to MLflow.

Resume: checkpoints live under ``checkpoints`` (the stage passes a folder keyed by its key and the
generator, outside its temporary folder). A new ``fit()`` on the same folder makes Ray Train V2
hand the latest checkpoint of its snapshot to ``get_checkpoint()``, after a worker failure and
after a killed driver alike. MLflow gets each step once: rank 0 reads the last step the run has
(the ``loss`` history) and logs only later steps, from the checkpoint's window first. A stop file
(:func:`request_stop`) makes the Train controller abort the fit, since Ray Train's own Ctrl-C
handler exists only when ``fit()`` runs on the main thread.
MLflow logging of the steps, credentials kept out of what Ray Train records: :mod:`fairskin.diffusion.step_log`.

In process (``diffusion.trainer = in_process``, :func:`_fit_in_process`): the same worker loop as rank 0 of 1
in the driver's process, over the level-1 plan of the cached latents, with its own checkpoints
(``<checkpoints>/in_process/``), retries and stop file, and the same weights, bit for bit; no Ray Train
processes (about 25 s of CPU a fit on a 2-core machine, most of a small fit's cost).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.config import FairSkinConfig, VariantSpec
from fairskin.data import DataError
from fairskin.data.latent_shards import LatentShards, LatentShardWriter
from fairskin.data.latent_stream import LatentStream, budget_bytes
from fairskin.data.stream import ArraySet, DecodedSet, WeightedStream
from fairskin.diffusion.base import subclass_prompts
from fairskin.diffusion.feed import Prefetch, plan_read_rows, plan_steps
from fairskin.diffusion.loop import (
    STATE_FILE,
    StepHook,
    fine_tune,
    load_trainee,
    loss_settings,
    method_hooks,
    save_checkpoint,
    with_draws,
)
from fairskin.diffusion.losses import check_finite_loss
from fairskin.diffusion.models import encode_prompts, load_sd, save_sd
from fairskin.diffusion.step import pixels_to_tensor
from fairskin.diffusion.step_log import last_logged_step, log_steps, mlflow_logger, to_floats, worker_tracking
from fairskin.model_lock import model_lock
from fairskin.runtime import keeping_signal_handlers

STOP_FILE = "STOP"
RUN_NAME = "fit"  # Ray Train's run folder under the checkpoints folder; fixed, so a rerun finds it
IN_PROCESS_DIR = "in_process"  # diffusion.trainer = in_process: its checkpoints, beside Ray Train's run folder
_IN_PROCESS_FITS = threading.Lock()  # one in-process fit at a time: torch's thread count is the process's
# Hooks ``hook(step, rank)`` every fine-tune's workers run before each step, beside those a call passes
# (:func:`fairskin.diffusion.loop.fine_tune`): a profiler, or a test's fault injection, which the tests register.
STEP_HOOKS: list[StepHook] = []


class FitInterrupted(Exception):
    """The fit was aborted by :func:`request_stop`; its checkpoints are kept for a resume."""


# --------------------------------------------------------------------------- driver side


@torch.no_grad()
def cache_training_set(
    parts,
    train: DecodedSet,
    prompts: list[str],
    cache_latents: bool = True,
    batch_size: int = 64,
    shard_root: Path | str | None = None,
) -> tuple[ArraySet | LatentShards, np.ndarray]:
    """(rows to stream, prompt embeddings (S + 1, L, D) with the empty prompt last).

    With ``cache_latents`` the rows hold ``latents`` float32 (N, 2, C, h, w): the scaled VAE
    posterior mean of each image and of its horizontal flip. Otherwise they hold the uint8
    pixels and workers encode every step. With ``shard_root`` the latents are written there as
    parquet shards chunk by chunk (:mod:`fairskin.data.latent_shards`; row ids are ``train``'s rows)
    and the rows are the opened shard set; a complete set already there is reused (it is a
    function of the base and ``train``, which the caller's folder names).
    """
    cond = encode_prompts(parts.tokenizer, parts.text_encoder, prompts + [""]).numpy()
    if shard_root is not None:
        return _cache_latent_shards(parts, train, shard_root, batch_size), cond
    columns: dict[str, np.ndarray] = {"subclass": train.subclass_id, "group": train.group_id}
    if cache_latents:
        scale = parts.vae.config.scaling_factor
        chunks = []
        for i in range(0, len(train), batch_size):
            x = pixels_to_tensor(train.pixels[i : i + batch_size])
            both = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
            z = parts.vae.encode(both).latent_dist.mean * scale
            chunks.append(z.unflatten(0, (len(x), 2)).numpy())
        columns["latents"] = np.concatenate(chunks).astype(np.float32)
    else:
        columns["pixels"] = train.pixels
    return ArraySet(train.subclass_id, columns), cond


@torch.no_grad()
def _cache_latent_shards(parts, train: DecodedSet, root: Path | str, batch_size: int) -> LatentShards:
    """Encode ``train`` in subclass order and write its latents (both flips) as shards at ``root``."""
    try:
        return LatentShards(root)
    except DataError:  # none there yet, or an incomplete set (a killed writer): write it again
        pass
    scale = parts.vae.config.scaling_factor
    order = np.argsort(train.subclass_id, kind="stable")  # the shard plan reads each subclass as one range
    writer = None
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        x = pixels_to_tensor(train.pixels[rows])
        z = parts.vae.encode(torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)).latent_dist.mean * scale
        z = z.unflatten(0, (len(x), 2)).numpy().astype(np.float32)
        if writer is None:
            writer = LatentShardWriter(root, z.shape[1:], overwrite=True)
        writer.add(rows, train.subclass_id[rows], z)
    return writer.close()


def _worker_resources(config: FairSkinConfig) -> dict[str, float]:
    d = config.diffusion
    return {"CPU": d.cpus_per_worker, **({"GPU": 1.0} if d.use_gpu else {})}


def cache_for(
    config: FairSkinConfig, base: Path | str, train: DecodedSet, shard_root: Path | None = None
) -> tuple[ArraySet | LatentShards, np.ndarray]:
    """The frozen parts' outputs for ``train`` (see :func:`cache_training_set`), from the ``base``
    pipeline; one cache serves every variant fine-tuned from that base. ``shard_root``: where the
    latents go as shards when ``diffusion.latent_feed`` is ``shards`` (ignored otherwise)."""
    parts = load_sd(str(base))  # holds the model lock itself
    prompts = subclass_prompts(config.diffusion.prompt_template, train.groups, train.diseases)
    if config.diffusion.latent_feed == "shards" and shard_root is None:
        raise ValueError("diffusion.latent_feed = shards: cache_for needs a shard_root to write the latents to")
    return cache_training_set(
        parts,
        train,
        prompts,
        config.diffusion.cache_latents,
        shard_root=shard_root if config.diffusion.latent_feed == "shards" else None,
    )


def request_stop(checkpoints: Path) -> None:
    """Ask the fit using ``checkpoints`` to abort (at the controller's next poll, within seconds)."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / STOP_FILE).write_text("stop\n")


def latest_state(checkpoints: Path, while_written: bool = False) -> tuple[Any, dict] | None:
    """(checkpoint, its state.json) of the latest checkpoint under ``checkpoints``: the later of what Ray Train
    recorded and what an in-process fit saved (``diffusion.trainer``). An in-process fit continues from it; a Ray
    Train fit continues from its own record only (:func:`_ray_train_latest`).

    ``while_written``: the caller polls a live fit (a test, a monitor). Ray Train rewrites its
    checkpoint-manager snapshot in place, so a reader can catch it empty: that reads as "none yet"
    instead of raising. A resuming fit (nothing writes) keeps Ray's error, which names a version
    mismatch or a damaged snapshot.
    """
    from ray.train import Checkpoint

    found = []
    saved = sorted(Path(checkpoints).resolve().glob(f"{IN_PROCESS_DIR}/checkpoint_*"))
    if saved:  # zero-padded steps: the last name is the latest; each is complete (renamed into place)
        checkpoint = Checkpoint.from_directory(str(saved[-1]))
        found.append((checkpoint, _read_state(checkpoint)))
    recorded = _ray_train_latest(checkpoints, while_written)
    if recorded is not None:
        found.append(recorded)
    return max(found, key=lambda pair: pair[1]["step"], default=None)


def _ray_train_latest(checkpoints: Path, while_written: bool = False) -> tuple[Any, dict] | None:
    """(checkpoint, its state.json) of the latest checkpoint Ray Train recorded under ``checkpoints`` (what its
    next ``fit()`` there continues from); see :func:`latest_state` for ``while_written``."""
    from ray.train import Result
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    try:
        checkpoint = Result.from_path(str(Path(checkpoints).resolve() / RUN_NAME)).checkpoint
    except RuntimeError:  # no run folder or no snapshot yet
        return None
    except CheckpointManagerInitializationError:
        if while_written:
            return None
        raise
    if checkpoint is None:
        return None
    return checkpoint, _read_state(checkpoint)


def _read_state(checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / STATE_FILE).read_text())


def _abort_callback(stop_file: Path):
    """A Train controller callback that aborts the run once ``stop_file`` exists, as Ray Train's own
    SIGINT handler does. It runs in the controller, which Ray places on the driver's node, so it sees
    the driver's files; it checks at every worker-group poll (every 2 s by default)."""
    import ray
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class AbortOnStopFile(WorkerGroupCallback):
        def __init__(self, path: str):
            self.path = path

        def after_worker_group_poll_status(self, worker_group_status) -> None:
            if os.path.exists(self.path):
                ray.get_runtime_context().current_actor.abort.remote()

    return AbortOnStopFile(str(stop_file))


def finetune_variant(
    config: FairSkinConfig,
    variant: VariantSpec,
    base: Path,
    train: DecodedSet,
    out: Path,
    *,
    tracking: dict[str, str] | None = None,
    step_hooks: Sequence[StepHook] = (),
    num_workers: int | None = None,
    cache: tuple[ArraySet | LatentShards, np.ndarray] | None = None,
    seed: int | None = None,
    checkpoints: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``variant`` from the pipeline folder ``base``; writes ``out/pipeline``.

    ``tracking`` = {"uri", "run_id"} makes rank 0 log step metrics to that MLflow run.
    ``step_hooks``: run before each step in every worker, after :data:`STEP_HOOKS` (they travel to the workers
    in the loop's config, so they must pickle). ``cache``: the
    result of :func:`cache_for` for this base and ``train`` (computed here when absent; with
    ``diffusion.latent_feed = shards`` the latents go to ``<checkpoints>/latents``). Shards in the
    cache: the workers stream them within ``diffusion.feed_memory_budget_mb`` each
    (:class:`~fairskin.data.latent_shards.LatentStream`) instead of reading one object-store array.
    ``seed``: the generator's seed (the weighted draws and every step's noise, timesteps, y' and
    prompt drop); default :func:`~fairskin.diffusion.variants.generator_seed` of repeat 0.
    ``checkpoints``: Ray Train's storage folder (default ``.ray-<out name>`` beside ``out``); a call
    on a folder that holds checkpoints of the same fine-tune continues from the latest one.
    Raises :class:`FitInterrupted` when :func:`request_stop` aborted it.
    Safe to call from several threads at once (one TorchTrainer each).
    """
    from fairskin.diffusion.variants import generator_seed

    d = config.diffusion.for_variant(variant)
    if seed is None:
        seed = (
            generator_seed(d, variant.name)
            if variant.name in d.variants or any(v.name == variant.name for v in d.custom_variants)
            else d.repeat_seeds[0]
        )
    workers = num_workers if num_workers is not None else d.num_workers
    if d.global_batch_size % max(1, workers):
        raise ValueError(
            f"diffusion.global_batch_size {d.global_batch_size} is not divisible by "
            f"{workers} workers (the batch size in config is global)"
        )
    out.mkdir(parents=True, exist_ok=True)
    base = Path(base).resolve() if Path(base).is_dir() else base  # workers run in their own directories
    parts = load_sd(str(base))
    storage = Path(checkpoints or out.parent / f".ray-{out.name}").resolve()  # Ray Train wants it absolute
    rows, cond = cache if cache is not None else cache_for(config, base, train, shard_root=storage / "latents")
    in_process = d.trainer == "in_process"
    if in_process:
        loop_config, datasets = _in_process_config(base, variant, d, seed, tracking, step_hooks), {}
    else:
        loop_config, datasets = _loop_config(base, rows, cond, variant, d, seed, tracking, step_hooks)
    loop_config["vocabulary"] = {"groups": list(train.groups), "num_diseases": len(train.diseases)}
    (storage / STOP_FILE).unlink(missing_ok=True)  # a stop request of an earlier run is not for this one
    prior = latest_state(storage) if in_process else _ray_train_latest(storage)  # what this fit continues from
    resumed_from = prior[1]["step"] if prior else 0
    if prior and resumed_from >= d.max_steps:  # finished before a kill: only the pipeline folder is missing
        logger = mlflow_logger(tracking)
        log_steps(logger, prior[1].get("window", []), last_logged_step(logger))
        return {
            **_write_pipeline(parts, prior[0], out, prior[1], time.time(), workers, resumed_from, loop_config),
            "train_rows": len(rows),
        }
    started = time.time()
    if in_process:
        checkpoint, state = _fit_in_process(loop_config, rows, cond, storage, d.max_failures)
    else:
        trainer = _trainer(config, d, workers, loop_config, datasets, storage)
        try:
            with keeping_signal_handlers():  # Ray Train's Ctrl-C handler would outlive the fit
                result = trainer.fit()
        except Exception as exc:
            if (storage / STOP_FILE).exists():
                raise FitInterrupted(f"fine-tune of {variant.name} stopped; checkpoints kept in {storage}") from exc
            raise
        if result.checkpoint is None:
            raise RuntimeError(f"fine-tune of {variant.name} ended without a checkpoint")
        checkpoint, state = result.checkpoint, _read_state(result.checkpoint)
    if state["step"] < d.max_steps:  # aborted between two polls of the controller
        raise FitInterrupted(f"fine-tune of {variant.name} stopped at step {state['step']}; checkpoints kept")
    return {
        **_write_pipeline(parts, checkpoint, out, state, started, workers, resumed_from, loop_config),
        "train_rows": len(rows),
    }


def _loop_config(base, rows, cond, variant: VariantSpec, d, seed: int, tracking, step_hooks) -> tuple[dict, dict]:
    """(the workers' ``train_loop_config``, the fit's Ray datasets): the level-1 plan as a Ray dataset over the
    object-store arrays, or, for latent shards, no dataset (the workers stream the shards themselves)."""
    import ray

    if isinstance(rows, LatentShards):
        feed: dict[str, Any] = {"latent_shards": rows.base, "arrays_ref": None}
        datasets: dict[str, Any] = {}
    else:
        stream = WeightedStream(rows, variant.weights, variant.apply, seed=seed)
        feed = {"latent_shards": None, "arrays_ref": [stream.arrays_ref]}
        datasets = {"train": stream.plan_dataset(0, d.max_steps * d.global_batch_size)}
    loop_config = {
        "base": str(base),
        **feed,
        "cond_ref": [ray.put(cond)],
        "variant": variant.model_dump(),
        "diffusion": d.model_dump(mode="json"),
        "seed": seed,
        "tracking": worker_tracking(tracking),
        "step_hooks": [*STEP_HOOKS, *step_hooks],
    }
    return loop_config, datasets


def _trainer(config: FairSkinConfig, d, workers: int, loop_config: dict, datasets: dict, storage: Path):
    """The fit's ``TorchTrainer``: ``workers`` workers of ``train_loop_per_worker``, checkpoints under
    ``storage`` (the two latest kept), a stop file that aborts it."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=d.use_gpu,
            resources_per_worker=_worker_resources(config),
            placement_strategy=d.placement_strategy,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_abort_callback(storage / STOP_FILE)],
        ),
    )


def _write_pipeline(
    parts, checkpoint, out: Path, state: dict, started: float, workers: int, resumed_from: int, cfg: dict
) -> dict[str, Any]:
    """Save ``parts`` with the checkpoint's UNet (its EMA when kept) as ``out/pipeline``, or, for an adapter
    method, the base with the adapter's file beside it (the method's hooks export it); the fit's summary."""
    from diffusers import UNet2DConditionModel

    hooks = _hooks(cfg, rank=0, world=1, device="cpu")
    with checkpoint.as_directory() as ckpt:
        if not any(hook.adapter for hook in hooks):
            weights = Path(ckpt) / ("ema" if (Path(ckpt) / "ema").is_dir() else "unet")
            with model_lock:
                parts.unet = UNet2DConditionModel.from_pretrained(weights, use_safetensors=True)
        save_sd(parts, out / "pipeline")
        for hook in hooks:
            hook.export_checkpoint(Path(ckpt), out / "pipeline")
    return {
        "steps": state["step"],
        "seconds": time.time() - started,
        "workers": workers,
        "window_images_per_s": state["window_images_per_s"],
        "resumed_from_step": resumed_from,
        "final_loss": state.get("loss", float("nan")),
        "attempts": state.get("attempt", 1),
        "starts": state.get("starts", []),
    }


def _in_process_config(base, variant: VariantSpec, d, seed: int, tracking, step_hooks) -> dict:
    """What an in-process fit reads: a Train worker's ``train_loop_config`` less the object-store references (the
    arrays stay in this process) and with the tracking URI as the driver holds it (nothing records it)."""
    return {
        "base": str(base),
        "variant": variant.model_dump(),
        "diffusion": d.model_dump(mode="json"),
        "seed": seed,
        "tracking": tracking,
        "step_hooks": [*STEP_HOOKS, *step_hooks],
    }


class _StopFile:
    """A step hook: stop an in-process fit before its next step once the stop file exists (:func:`request_stop`),
    as the Train controller aborts a fit at its next poll."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, step: int, rank: int) -> None:
        if self.path.exists():
            raise FitInterrupted(f"fine-tune stopped before step {step + 1}; checkpoints kept in {self.path.parent}")


def _fit_in_process(cfg: dict, rows: ArraySet, cond: np.ndarray, storage: Path, max_failures: int):
    """``diffusion.trainer = in_process``: the loop of one Train worker (rank 0 of 1, as many torch threads as its
    CPUs would give it) in this process, over the level-1 plan of the cached ``rows`` (the plan a Train worker
    reads from Ray Data, bit for bit). Checkpoints go to ``storage/in_process`` (the two latest kept); an attempt
    continues from :func:`latest_state`; a failed one is retried from there up to ``max_failures`` times (-1:
    always), as Ray Train retries a worker group. Returns (the last checkpoint, its state)."""
    from fairskin.runtime import seed_everything, set_thread_count, thread_count_restored

    failures = 0
    with _IN_PROCESS_FITS, thread_count_restored():
        set_thread_count(math.ceil(cfg["diffusion"]["cpus_per_worker"]))  # as configure_worker sets a Train worker's
        while True:
            seed_everything(cfg["seed"])  # as configure_worker seeds a Train worker
            try:
                _in_process_attempt(cfg, rows, cond, storage)
                break
            except FitInterrupted:
                raise
            except Exception:
                failures += 1
                if max_failures != -1 and failures > max_failures:
                    raise
    return latest_state(storage)


def _in_process_attempt(cfg: dict, rows: ArraySet, cond: np.ndarray, storage: Path) -> None:
    """One attempt of an in-process fit, from the latest checkpoint under ``storage`` (or the base)."""
    from diffusers import DDPMScheduler

    from fairskin.data.sampling import WeightedSampler
    from fairskin.data.stream import RunPlan
    from fairskin.diffusion.loop import in_process_feed
    from fairskin.io import atomic_directory

    d, variant, seed = cfg["diffusion"], cfg["variant"], cfg["seed"]
    device = "cuda" if d["use_gpu"] else "cpu"
    hooks = _hooks(cfg, rank=0, world=1, device=device)
    logger = mlflow_logger(cfg["tracking"])
    prior = latest_state(storage)
    trainee, start_step, attempt, starts, logged = _start_attempt(
        cfg, prior[0] if prior else None, device, None, hooks, logger
    )
    arrays = rows.arrays()
    scheduler = DDPMScheduler.from_pretrained(cfg["base"], subfolder="scheduler")
    loss = loss_settings(variant, d)
    plan = RunPlan(WeightedSampler(np.asarray(arrays["subclass"]), variant["weights"], variant["apply"], seed))
    steps = in_process_feed(
        plan,
        arrays,
        torch.from_numpy(np.array(cond)).to(device),
        start=start_step,
        seed=seed,
        d=d,
        loss=loss,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        device=device,
    )
    saved = storage / IN_PROCESS_DIR

    def report(done: int, state: dict[str, Any], window: list) -> None:
        nonlocal logged
        with atomic_directory(saved / f"checkpoint_{done:08d}", replace=True) as tmp:
            save_checkpoint(tmp, trainee, state)
        for old in sorted(saved.glob("checkpoint_*"))[:-2]:  # the two latest kept, as Ray Train keeps them
            shutil.rmtree(old, ignore_errors=True)
        logged = log_steps(logger, window, logged)  # after the checkpoint, which carries them too

    loop_cfg = {**cfg, "step_hooks": [*cfg["step_hooks"], _StopFile(storage / STOP_FILE)]}
    feed = Prefetch(steps, device, depth=2)
    try:
        _train_windows(
            trainee, scheduler, feed, loop_cfg, loss, attempt, starts, report, vae=None, device=device, rank=0
        )
    finally:
        feed.close()


# --------------------------------------------------------------------------- worker side


def _worker_inputs(cfg: dict, device) -> tuple[Any, Any, Any, Any, Any]:
    """A worker's (cached arrays or None, the opened latent shards or None, prompt table (S + 1, L, D) on
    ``device``, noise scheduler, VAE for the encode-every-step path or None)."""
    import ray
    from diffusers import DDPMScheduler

    shards = None
    if cfg.get("latent_shards"):  # stream the cached latents from shards within the budget
        from fairskin.data.latent_stream import limit_allocator_slack

        limit_allocator_slack()
        shards = LatentShards(cfg["latent_shards"])
        arrays = {"latents": None}  # latents are cached; step_latents reads them from each step's inputs
    else:
        arrays = ray.get(cfg["arrays_ref"][0])
    cond_table = torch.from_numpy(np.array(ray.get(cfg["cond_ref"][0]))).to(device)
    scheduler = DDPMScheduler.from_pretrained(cfg["base"], subfolder="scheduler")
    vae = None
    if "latents" not in arrays:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg["base"], subfolder="vae", use_safetensors=True)
        vae = vae.to(device).eval().requires_grad_(False)
    return arrays, shards, cond_table, scheduler, vae


def _worker_plan(cfg: dict, arrays, shards, vae, *, rank: int, world: int, start_step: int):
    """This rank's :class:`~fairskin.diffusion.feed.StepInputs` from ``start_step`` on (from the shard feed, or
    from Ray Data's plan shard over the object-store arrays) and the latents' (C, h, w)."""
    import ray.train

    d, variant, seed, global_batch = (
        cfg["diffusion"],
        cfg["variant"],
        cfg["seed"],
        cfg["diffusion"]["global_batch_size"],
    )
    if shards is not None:
        stream = LatentStream(
            shards,
            scheme=variant["weights"],
            apply=variant["apply"],
            seed=seed,
            global_batch=global_batch,
            budget_bytes=budget_bytes(d["feed_memory_budget_mb"]),
            rank=rank,
            world=world,
        )
        return stream.steps(start_step, d["max_steps"]), tuple(shards.shape[1:])
    shard = ray.train.get_dataset_shard("train")
    plan = plan_steps(
        shard.iter_batches(batch_size=plan_read_rows(global_batch), batch_format="numpy", prefetch_batches=2),
        arrays,
        rank=rank,
        world=world,
        seed=seed,
        global_batch=global_batch,
        start_step=start_step,
    )
    if "latents" in arrays:
        return plan, tuple(arrays["latents"].shape[2:])
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return plan, (vae.config.latent_channels, *(n // factor for n in arrays["pixels"].shape[1:3]))


def _window_state(pending: list, done: int, global_batch: int, attempt: int, starts: list) -> dict[str, Any]:
    """The checkpoint's ``state.json`` at ``done`` steps: the window's per-step metrics (floats), its median
    throughput, the attempt and where each attempt started."""
    # Steady-state throughput of this window (its first step pays the iterator's start-up).
    rates = [m["images_per_s"] for _, m in pending[1:]] or [pending[-1][1]["images_per_s"]]
    return {
        "step": done,
        "position": done * global_batch,
        "loss": pending[-1][1]["loss"],
        "attempt": attempt,
        "window_images_per_s": float(np.median(rates)),
        "window": pending,
        "starts": starts,
        "rng": "per-step generators seeded by (seed, step[, rank])",
    }


def _hooks(cfg: dict, *, rank: int, world: int, device) -> list:
    """The variant's method hooks for one worker (see :func:`fairskin.diffusion.loop.method_hooks`)."""
    return method_hooks(
        cfg["variant"],
        seed=cfg["seed"],
        groups=cfg["vocabulary"]["groups"],
        num_diseases=cfg["vocabulary"]["num_diseases"],
        max_steps=cfg["diffusion"]["max_steps"],
        rank=rank,
        world=world,
        device=device,
    )


def train_loop_per_worker(cfg: dict) -> None:
    """One Ray Train worker of the fine-tune (see the module docstring): the loop of :mod:`fairskin.diffusion.loop`
    over this rank's share of the plan, a checkpoint and a report every ``checkpoint_every`` steps."""
    import ray
    import ray.train
    import ray.train.torch

    from fairskin.runtime import configure_worker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    d, variant, seed = cfg["diffusion"], cfg["variant"], cfg["seed"]
    configure_worker(seed=seed)
    device = ray.train.torch.get_device()
    arrays, shards, cond_table, scheduler, vae = _worker_inputs(cfg, device)
    hooks = _hooks(cfg, rank=rank, world=world, device=device)
    logger = mlflow_logger(cfg["tracking"]) if rank == 0 else None
    trainee, start_step, attempt, starts, logged = _start_attempt(
        cfg, ray.train.get_checkpoint(), device, ray.train.torch.prepare_model, hooks, logger
    )
    loss = loss_settings(variant, d)
    plan, latent_chw = _worker_plan(cfg, arrays, shards, vae, rank=rank, world=world, start_step=start_step)
    steps = with_draws(
        plan,
        cond_table,
        latent_chw,
        seed=seed,
        rank=rank,
        d=d,
        loss=loss,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        device=device,
    )
    feed = Prefetch(steps, device, depth=2)  # this rank's tensors on the device (ahead in a thread on a GPU)

    def report(done: int, state: dict[str, Any], window: list) -> None:
        nonlocal logged
        metrics = {"step": done, "loss": state["loss"]}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(Path(tmp), trainee, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            logged = log_steps(logger, window, logged)  # after the checkpoint, which carries them too
        else:
            ray.train.report(metrics)

    _train_windows(trainee, scheduler, feed, cfg, loss, attempt, starts, report, vae=vae, device=device, rank=rank)
    feed.close()


def _start_attempt(cfg: dict, checkpoint, device, wrap, hooks: list, logger) -> tuple[Any, int, int, list, int]:
    """An attempt's trainee, from ``checkpoint`` (a Ray Train ``Checkpoint``; None: the base), and where it starts:
    (trainee, first step, attempt number, where each attempt started with this one appended, the last step the
    MLflow run of ``logger`` holds once the checkpoint's window is logged)."""
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainee, resumed = load_trainee(cfg["base"], Path(folder), cfg["diffusion"], device, wrap, hooks)
    else:
        trainee, resumed = load_trainee(cfg["base"], None, cfg["diffusion"], device, wrap, hooks)
    start_step = resumed["step"] if resumed else 0
    attempt = resumed.get("attempt", 1) + 1 if resumed else 1
    # Where each attempt that reached a checkpoint started: [{"attempt", "from_step", "first_step"}]
    # (first_step: the first step it trained, from_step + 1 when it resumed exactly from its checkpoint).
    starts = list(resumed.get("starts", [])) if resumed else []
    starts.append({"attempt": attempt, "from_step": start_step, "first_step": None})
    # Each step reaches MLflow once: log only steps after the run's last one, starting with the
    # resumed checkpoint's window (a kill may have fallen between its checkpoint and its logging).
    logged = last_logged_step(logger)
    if resumed:
        logged = log_steps(logger, resumed.get("window", []), logged)
    return trainee, start_step, attempt, starts, logged


def _train_windows(
    trainee, scheduler, feed, cfg: dict, loss, attempt: int, starts: list, report, *, vae, device, rank: int
) -> None:
    """One attempt's steps over ``feed`` (the loop of :mod:`fairskin.diffusion.loop`), shared by a Train worker and
    an in-process fit: every ``checkpoint_every`` steps and at the last, ``report(done, state, window)`` with the
    checkpoint's ``state.json`` and the window's per-step metrics (floats)."""
    d, variant = cfg["diffusion"], cfg["variant"]
    pending: list[tuple[int, dict[str, Any]]] = []  # per step: device tensors until the window ends
    for done, metrics, first_bad in fine_tune(
        trainee, scheduler, feed, d=d, loss=loss, vae=vae, device=device, rank=rank, step_hooks=cfg["step_hooks"]
    ):
        if starts[-1]["first_step"] is None:
            starts[-1]["first_step"] = done
        pending.append((done, metrics))
        if done % d["checkpoint_every"] and done != d["max_steps"]:
            continue
        check_finite_loss(first_bad, f"fine-tune of {variant['name']} (rank {rank})")
        pending = to_floats(pending)  # the window's one host sync
        report(done, _window_state(pending, done, d["global_batch_size"], attempt, starts), pending)
        pending = []
