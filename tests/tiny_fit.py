"""A tiny fine-tune in this process, for the method tests: a tiny SD base saved as a pipeline folder, four
subclasses (two groups x two diseases) of random latents with their prompts' embeddings, and the engine's own
loop (:mod:`fairskin.diffusion.loop`) over the level-1 plan, as a Ray Train worker of rank r of W would run it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.config import build_config
from fairskin.diffusion.base import subclass_prompts
from fairskin.diffusion.models import build_tiny_sd, encode_prompts, save_sd

GROUPS = ("Light", "Dark")
DISEASES = ("psoriasis", "eczema")
ROWS = 16


@dataclass
class TinySet:
    base: Path
    arrays: dict[str, np.ndarray]  # latents (N, 2, C, h, w), subclass (N,)
    cond: torch.Tensor  # (S + 1, L, D)


def tiny_set(folder: Path, seed: int = 0) -> TinySet:
    """A tiny base pipeline in ``folder`` and a training set for it (random latents, subclass = row % 4)."""
    parts = build_tiny_sd(image_size=32, seed=seed)
    base = save_sd(parts, Path(folder) / "base")
    prompts = subclass_prompts("{group} people {disease}", GROUPS, DISEASES) + [""]
    with torch.no_grad():
        cond = encode_prompts(parts.tokenizer, parts.text_encoder, prompts).float()
    c, h = parts.unet.config.in_channels, parts.unet.config.sample_size
    g = torch.Generator().manual_seed(seed + 1)
    latents = torch.randn((ROWS, 2, c, h, h), generator=g).numpy()
    subclass = (np.arange(ROWS) % (len(GROUPS) * len(DISEASES))).astype(np.int64)
    return TinySet(base, {"latents": latents, "subclass": subclass}, cond)


def diffusion_settings(**update: Any) -> dict[str, Any]:
    """The smoke preset's diffusion settings as the loop reads them (a dump), with ``update``."""
    d = build_config("smoke").diffusion.model_dump(mode="json")
    return {**d, "global_batch_size": 8, "checkpoint_every": 3, "ema_decay": None, **update}


def fit(
    data: TinySet,
    variant: dict[str, Any],
    d: dict[str, Any],
    *,
    seed: int = 0,
    checkpoint: Path | None = None,
    until: int | None = None,
    rank: int = 0,
    world: int = 1,
    wrap=None,
):
    """Fine-tune ``variant`` (a ``VariantSpec`` dump) from ``data.base`` with the engine's loop, from ``checkpoint``
    when given, to step ``until`` (default ``d["max_steps"]``). Returns (trainee, per-step metrics as floats)."""
    from diffusers import DDPMScheduler

    from fairskin.data.sampling import WeightedSampler
    from fairskin.data.stream import RunPlan
    from fairskin.diffusion.loop import fine_tune, in_process_feed, load_trainee, loss_settings, method_hooks

    hooks = method_hooks(
        variant, seed=seed, groups=GROUPS, num_diseases=len(DISEASES), rank=rank, world=world, max_steps=d["max_steps"]
    )
    trainee, state = load_trainee(str(data.base), checkpoint, d, "cpu", wrap, hooks)
    start = int(state["step"]) if state else 0
    scheduler = DDPMScheduler.from_pretrained(str(data.base), subfolder="scheduler")
    loss = loss_settings(variant, d)
    plan = RunPlan(WeightedSampler(data.arrays["subclass"], variant["weights"], variant["apply"], seed))
    feed = in_process_feed(
        plan,
        data.arrays,
        data.cond,
        start=start,
        seed=seed,
        d={**d, "max_steps": until or d["max_steps"]},
        loss=loss,
        num_train_timesteps=scheduler.config.num_train_timesteps,
        device="cpu",
        rank=rank,
        world=world,
    )
    metrics = []
    for done, step_metrics, _ in fine_tune(trainee, scheduler, feed, d=d, loss=loss, rank=rank):
        metrics.append({"step": done, **{k: float(v) for k, v in step_metrics.items()}})
    return trainee, metrics


def ddp_worker(rank: int, world: int, port: int, data: TinySet, variant: dict, d: dict, out: Path) -> None:
    """One of ``world`` processes of a gloo group on the loopback address: the tiny fine-tune of ``variant`` with
    the UNet in DistributedDataParallel (as Ray Train's ``prepare_model`` wraps it) and the hooks' collectives
    over the group; saves this rank's per-step metrics and trained parameters to ``out/rank<r>.pt``."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainee, metrics = fit(data, variant, d, seed=5, rank=rank, world=world, wrap=DistributedDataParallel)
        trained = {k: v.detach().clone() for k, v in trainee.unet.named_parameters() if v.requires_grad}
        torch.save({"metrics": metrics, "trained": trained}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
