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
optimizer and LR-scheduler state, step) and then logs the steps since the last one to
MLflow, so a step re-run after a failure is logged once.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.config import FairSkinConfig, VariantSpec
from fairskin.data.stream import ArraySet, DecodedSet, WeightedStream
from fairskin.diffusion.base import pixels_to_tensor, subclass_prompts
from fairskin.diffusion.losses import check_finite_loss, note_nonfinite, other_subclasses, training_loss
from fairskin.diffusion.models import encode_prompts, load_sd, save_sd

STATE_FILE = "state.json"


# --------------------------------------------------------------------------- driver side


@torch.no_grad()
def cache_training_set(parts, train: DecodedSet, prompts: list[str], cache_latents: bool = True,
                       batch_size: int = 64) -> tuple[ArraySet, np.ndarray]:
    """(rows to stream, prompt embeddings (S + 1, L, D) with the empty prompt last).

    With ``cache_latents`` the rows hold ``latents`` float32 (N, 2, C, h, w): the scaled VAE
    posterior mean of each image and of its horizontal flip. Otherwise they hold the uint8
    pixels and workers encode every step.
    """
    cond = encode_prompts(parts.tokenizer, parts.text_encoder, prompts + [""]).numpy()
    columns: dict[str, np.ndarray] = {"subclass": train.subclass_id, "group": train.group_id}
    if cache_latents:
        scale = parts.vae.config.scaling_factor
        chunks = []
        for i in range(0, len(train), batch_size):
            x = pixels_to_tensor(train.pixels[i:i + batch_size])
            both = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
            z = parts.vae.encode(both).latent_dist.mean * scale
            chunks.append(z.unflatten(0, (len(x), 2)).numpy())
        columns["latents"] = np.concatenate(chunks).astype(np.float32)
    else:
        columns["pixels"] = train.pixels
    return ArraySet(train.subclass_id, columns), cond


def _worker_resources(config: FairSkinConfig) -> dict[str, float]:
    d = config.diffusion
    return {"CPU": d.cpus_per_worker, **({"GPU": 1.0} if d.use_gpu else {})}


# transformers/diffusers `from_pretrained` is not thread-safe (two at once can leave weights on the
# meta device); variants fine-tuned from driver threads load their parts one at a time.
_LOAD_LOCK = threading.Lock()


def cache_for(config: FairSkinConfig, base: Path | str, train: DecodedSet) -> tuple[ArraySet, np.ndarray]:
    """The frozen parts' outputs for ``train`` (see :func:`cache_training_set`), from the ``base``
    pipeline; one cache serves every variant fine-tuned from that base."""
    with _LOAD_LOCK:
        parts = load_sd(str(base))
    prompts = subclass_prompts(config.diffusion.prompt_template, train.groups, train.diseases)
    return cache_training_set(parts, train, prompts, config.diffusion.cache_latents)


def finetune_variant(config: FairSkinConfig, variant: VariantSpec, base: Path, train: DecodedSet, out: Path, *,
                     tracking: dict[str, str] | None = None, fail_at_step: int | None = None,
                     num_workers: int | None = None, cache: tuple[ArraySet, np.ndarray] | None = None,
                     seed: int | None = None) -> dict[str, Any]:
    """Fine-tune ``variant`` from the pipeline folder ``base``; writes ``out/pipeline``.

    ``tracking`` = {"uri", "run_id"} makes rank 0 log step metrics to that MLflow run.
    ``fail_at_step`` (tests) raises once in the first attempt at that step. ``cache``: the
    result of :func:`cache_for` for this base and ``train`` (computed here when absent).
    ``seed``: the generator's seed (the weighted draws and every step's noise, timesteps, y' and
    prompt drop); default :func:`~fairskin.diffusion.variants.generator_seed` of repeat 0.
    Safe to call from several threads at once (one TorchTrainer each).
    """
    import ray
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fairskin.diffusion.variants import generator_seed

    d = config.diffusion
    if seed is None:
        seed = generator_seed(d, variant.name) if variant.name in d.variants or any(
            v.name == variant.name for v in d.custom_variants) else d.repeat_seeds[0]
    workers = num_workers if num_workers is not None else d.num_workers
    if d.global_batch_size % max(1, workers):
        raise ValueError(f"diffusion.global_batch_size {d.global_batch_size} is not divisible by "
                         f"{workers} workers (the batch size in config is global)")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(base).resolve() if Path(base).is_dir() else base  # workers run in their own directories
    with _LOAD_LOCK:
        parts = load_sd(str(base))
    rows, cond = cache if cache is not None else cache_for(config, base, train)
    stream = WeightedStream(rows, variant.weights, variant.apply, seed=seed)
    total = d.max_steps * d.global_batch_size
    loop_config = {
        "base": str(base), "arrays_ref": [stream.arrays_ref], "cond_ref": [ray.put(cond)],
        "variant": variant.model_dump(), "diffusion": d.model_dump(mode="json"), "seed": seed,
        "tracking": tracking, "fail_at_step": fail_at_step, "fail_marker": str(out / ".failed_once"),
    }
    storage = out.resolve().parent / f".ray-{out.name}"  # Ray Train needs an absolute storage path
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=d.use_gpu,
                                     resources_per_worker=_worker_resources(config)),
        datasets={"train": stream.plan_dataset(0, total)},
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(name=f"finetune-{variant.name}", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=d.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    started = time.time()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tune of {variant.name} ended without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / STATE_FILE).read_text())
        weights = Path(ckpt) / ("ema" if (Path(ckpt) / "ema").is_dir() else "unet")
        from diffusers import UNet2DConditionModel

        with _LOAD_LOCK:
            parts.unet = UNet2DConditionModel.from_pretrained(weights, use_safetensors=True)
    save_sd(parts, out / "pipeline")
    return {"steps": state["step"], "seconds": time.time() - started, "workers": workers,
            "window_images_per_s": state["window_images_per_s"],
            "final_loss": state.get("loss", float("nan")), "attempts": state.get("attempt", 1)}


# --------------------------------------------------------------------------- worker side


def _step_generator(seed: int, step: int, rank: int | None = None) -> torch.Generator:
    parts = [seed, step] + ([] if rank is None else [rank])
    return torch.Generator().manual_seed(int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> 1))


def _flips(positions: np.ndarray, seed: int) -> np.ndarray:
    """0/1 per global position: which flip of the image the step sees (a pure function)."""
    return (np.random.default_rng(np.random.SeedSequence([seed, 99])).integers(0, 2**31, size=1)[0]
            ^ positions) & 1


def _save_checkpoint(folder: Path, unet, ema, optimizer, lr_scheduler, state: dict) -> None:
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    if ema is not None:
        ema.save_pretrained(folder / "ema", safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()},
               folder / "optimizer.pt")
    (folder / STATE_FILE).write_text(json.dumps(state))


def _mlflow_logger(tracking: dict[str, str] | None):
    if not tracking:
        return None
    from mlflow import MlflowClient

    from fairskin.tracking import RunHandle

    return RunHandle(MlflowClient(tracking["uri"]), tracking["run_id"], "")


def train_loop_per_worker(cfg: dict) -> None:
    """One Ray Train worker of the fine-tune (see the module docstring)."""
    import ray
    import ray.train
    import ray.train.torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler

    from fairskin.runtime import configure_worker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    d, variant, seed = cfg["diffusion"], cfg["variant"], cfg["seed"]
    configure_worker(seed=seed)
    device = ray.train.torch.get_device()
    arrays = ray.get(cfg["arrays_ref"][0])
    cond_table = torch.from_numpy(np.array(ray.get(cfg["cond_ref"][0]))).to(device)
    num_subclasses = cond_table.shape[0] - 1
    scheduler = DDPMScheduler.from_pretrained(cfg["base"], subfolder="scheduler")
    vae = None
    if "latents" not in arrays:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg["base"], subfolder="vae").to(device).eval().requires_grad_(False)

    unet = UNet2DConditionModel.from_pretrained(cfg["base"], subfolder="unet")
    ema = None
    checkpoint = ray.train.get_checkpoint()
    start_step, attempt = 0, 1
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            folder = Path(folder)
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True)
            if d["ema_decay"] and (folder / "ema").is_dir():
                ema = UNet2DConditionModel.from_pretrained(folder / "ema", use_safetensors=True)
            saved = torch.load(folder / "optimizer.pt", weights_only=True)
            state = json.loads((folder / STATE_FILE).read_text())
            start_step, attempt = state["step"], state.get("attempt", 1) + 1
    if d["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    if d["ema_decay"] and ema is None:
        ema = UNet2DConditionModel.from_config(unet.config)
        ema.load_state_dict(unet.state_dict())
    if ema is not None:
        ema.requires_grad_(False)
    unet.train()
    model = ray.train.torch.prepare_model(unet)
    raw_unet = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=d["learning_rate"])
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=d["warmup_steps"])
    if checkpoint is not None:
        optimizer.load_state_dict(saved["optimizer"])
        lr_scheduler.load_state_dict(saved["lr_scheduler"])

    global_batch = d["global_batch_size"]
    use_cbdm = variant["loss"] == "cbdm"
    tau = d["cbdm_tau"] if variant.get("cbdm_tau") is None else variant["cbdm_tau"]
    gamma = d["cbdm_gamma"] if variant.get("cbdm_gamma") is None else variant["cbdm_gamma"]
    include_self = d["cbdm_other"] == "all"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(d["mixed_precision"])
    logger = _mlflow_logger(cfg["tracking"]) if rank == 0 else None
    pending: list[tuple[int, dict[str, float]]] = []
    shard = ray.train.get_dataset_shard("train")
    step, last_time, loss_value = start_step, time.perf_counter(), float("nan")
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # divergence flag, read once per window
    for batch in shard.iter_batches(batch_size=global_batch, batch_format="numpy", prefetch_batches=2):
        positions = batch["position"]
        if positions[0] < start_step * global_batch:
            continue  # already trained before the checkpoint we resumed from
        step = int(positions[0]) // global_batch
        if (rank == 0 and cfg["fail_at_step"] is not None and step == cfg["fail_at_step"]
                and not os.path.exists(cfg["fail_marker"])):
            Path(cfg["fail_marker"]).write_text(f"failed at step {step}")
            raise RuntimeError(f"injected failure at step {step}")
        mine = positions % world == rank
        rows, weights = batch["row"][mine], torch.from_numpy(np.array(batch["weight"][mine], np.float32))
        subclass = torch.from_numpy(np.array(arrays["subclass"][rows]))
        flips = _flips(positions[mine], seed)
        if vae is not None:
            x = pixels_to_tensor(arrays["pixels"][rows]).to(device)
            x = torch.where(torch.from_numpy(flips.astype(bool)).view(-1, 1, 1, 1).to(device), x.flip(-1), x)
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        else:
            latents = torch.from_numpy(np.array(arrays["latents"][rows, flips])).to(device)
        shared = _step_generator(seed, step)           # same on every rank: the whole-batch prompt drop
        local = _step_generator(seed, step, rank)      # per rank: noise, timesteps, y'
        dropped = torch.rand(1, generator=shared).item() < d["prompt_drop_prob"]
        cond = (cond_table[-1:].expand(len(rows), -1, -1) if dropped else cond_table[subclass.to(device)])
        cond_other = None
        if use_cbdm and not dropped:
            cond_other = cond_table[other_subclasses(subclass, num_subclasses, local, include_self).to(device)]
        noise = torch.randn(latents.shape, generator=local).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(rows),), generator=local).to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = training_loss(model, scheduler, latents, cond, cond_other, weights.to(device), noise=noise,
                                timesteps=timesteps, use_cbdm=use_cbdm, tau=tau, gamma=gamma,
                                prompt_dropped=dropped)
        first_bad = note_nonfinite(first_bad, out.loss, step + 1)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), d["max_grad_norm"])
        optimizer.step()
        lr_scheduler.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(raw_unet.parameters()), 1.0 - d["ema_decay"])
        now = time.perf_counter()
        loss_value = float(out.loss.detach())
        done = step + 1
        pending.append((done, {"loss": loss_value, "noise_loss": out.noise, "regulariser": out.regulariser,
                               "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                               "images_per_s": global_batch / max(now - last_time, 1e-9),
                               "prompt_dropped": float(dropped)}))
        last_time = now
        if done % d["checkpoint_every"] == 0 or done == d["max_steps"]:
            check_finite_loss(first_bad, f"fine-tune of {variant['name']} (rank {rank})")
            # Steady-state throughput of this window (its first step pays the iterator's start-up).
            rates = [m["images_per_s"] for _, m in pending[1:]] or [pending[-1][1]["images_per_s"]]
            state = {"step": done, "position": done * global_batch, "loss": loss_value, "attempt": attempt,
                     "window_images_per_s": float(np.median(rates)),
                     "rng": "per-step generators seeded by (seed, step[, rank])"}
            metrics = {"step": done, "loss": loss_value}
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    _save_checkpoint(Path(tmp), raw_unet, ema, optimizer, lr_scheduler, state)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
                if logger is not None:  # after the checkpoint: a re-run step is never logged twice
                    for s, values in pending:
                        logger.log_metrics(values, step=s)
            else:
                ray.train.report(metrics)
            pending.clear()
