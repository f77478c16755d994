"""The fine-tune loop, once: the Ray Train worker (:func:`fairskin.diffusion.finetune.train_loop_per_worker`) and a
generator study's trial (:func:`fairskin.tune.generator.run_generator_trial`) both read it top to bottom as

    trainee, state = load_trainee(base, checkpoint, d, device)          # UNet (+ EMA), AdamW, LR schedule
    feed = with_draws(steps, cond_table, latent_chw, seed=..., ...)     # each step's noise, t, y', prompt drop
    for done, metrics in fine_tune(trainee, scheduler, feed, ...):      # one optimizer step per item
        ... at a checkpoint step: save_checkpoint(folder, trainee, state) and report

and differ only in where the steps come from (Ray Data's plan shard, the shard feed, or the level-1 plan in
process) and what a checkpoint does (``ray.train.report``, or scoring a pool for Tune).

The method's side of a step, its loss (the noise-prediction loss, CBDM's regulariser with its tau and gamma),
is resolved once from the variant's spec (:func:`loss_settings`). Each step's randomness comes from generators
seeded by (seed, step[, rank]), so a resumed run repeats exactly the draws of the steps it re-runs.

``step_hooks``: callables ``hook(step, rank)`` run before each step (0-based): a place for a profiler, or
for a test's fault injection (the tests register theirs; nothing here sleeps or fails on purpose).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.diffusion.step import autocast_dtype, draw_step_inputs, step_generator, step_latents, train_step

STATE_FILE = "state.json"
StepHook = Callable[[int, int], None]


@dataclass(frozen=True)
class LossSettings:
    """The loss a variant trains with: CBDM or not, its tau and gamma, and whether y' may equal y."""

    use_cbdm: bool
    tau: float
    gamma: float
    include_self: bool


def loss_settings(variant: Mapping[str, Any], d: Mapping[str, Any]) -> LossSettings:
    """The variant's loss (a ``VariantSpec`` dump) under the diffusion settings ``d`` (a ``DiffusionConfig``
    dump): the variant's own ``cbdm_tau`` / ``cbdm_gamma`` where it sets them, else ``d``'s."""
    return LossSettings(
        use_cbdm=variant["loss"] == "cbdm",
        tau=d["cbdm_tau"] if variant.get("cbdm_tau") is None else variant["cbdm_tau"],
        gamma=d["cbdm_gamma"] if variant.get("cbdm_gamma") is None else variant["cbdm_gamma"],
        include_self=d["cbdm_other"] == "all",
    )


@dataclass
class Trainee:
    """What a fine-tune steps: ``model`` (whose forward runs: the UNet, or its DDP wrapper on several workers),
    ``unet`` (the unwrapped UNet: checkpoints and the EMA follow it), ``ema`` (or None), the optimizer and the
    LR schedule."""

    model: Any
    unet: Any
    ema: Any
    optimizer: Any
    lr_scheduler: Any


def prepare_unet(unet, ema, d: Mapping[str, Any]) -> tuple[Any, Any]:
    """Gradient checkpointing and the EMA copy as ``d`` (a ``diffusion`` config dump) asks: returns
    (``unet``, ``ema`` or None); a restored ``ema`` is kept, else a frozen copy of ``unet`` is made."""
    if d["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    if d["ema_decay"] and ema is None:
        ema = type(unet).from_config(unet.config)
        ema.load_state_dict(unet.state_dict())
    if ema is not None:
        ema.requires_grad_(False)
    return unet, ema


def build_optimizer(parameters, d: Mapping[str, Any], saved: dict | None = None) -> tuple[Any, Any]:
    """AdamW at ``d["learning_rate"]`` with diffusers' constant-with-warm-up schedule; ``saved`` (a
    checkpoint's ``optimizer.pt``) restores both states. Returns (optimizer, lr_scheduler)."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(parameters, lr=d["learning_rate"])
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=d["warmup_steps"])
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        lr_scheduler.load_state_dict(saved["lr_scheduler"])
    return optimizer, lr_scheduler


def load_trainee(
    base: str,
    checkpoint: Path | None,
    d: Mapping[str, Any],
    device,
    wrap: Callable[[Any], Any] | None = None,
) -> tuple[Trainee, dict | None]:
    """The UNet of the pipeline folder ``base`` (or of ``checkpoint``, with its EMA, optimizer and LR-schedule
    state) on ``device``, ready to train; ``wrap`` (Ray Train's ``prepare_model``) wraps it for several workers.
    Returns (trainee, the checkpoint's ``state.json`` or None)."""
    from diffusers import UNet2DConditionModel

    from fairskin.model_lock import model_lock

    ema, saved, state = None, None, None
    with model_lock:
        if checkpoint is None:
            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
        else:
            checkpoint = Path(checkpoint)
            unet = UNet2DConditionModel.from_pretrained(checkpoint / "unet", use_safetensors=True)
            if d["ema_decay"] and (checkpoint / "ema").is_dir():
                ema = UNet2DConditionModel.from_pretrained(checkpoint / "ema", use_safetensors=True)
    if checkpoint is not None:
        saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        state = json.loads((checkpoint / STATE_FILE).read_text())
    unet, ema = prepare_unet(unet, ema, d)
    if ema is not None:
        ema.to(device)
    unet = unet.to(device).train()
    model = wrap(unet) if wrap is not None else unet
    raw = model.module if hasattr(model, "module") else model
    optimizer, lr_scheduler = build_optimizer(model.parameters(), d, saved)
    return Trainee(model, raw, ema, optimizer, lr_scheduler), state


def save_checkpoint(folder: Path, trainee: Trainee, state: Mapping[str, Any]) -> None:
    """UNet and EMA as safetensors, optimizer and LR-schedule state, and ``state`` (JSON) into ``folder``."""
    trainee.unet.save_pretrained(folder / "unet", safe_serialization=True)
    if trainee.ema is not None:
        trainee.ema.save_pretrained(folder / "ema", safe_serialization=True)
    torch.save(
        {"optimizer": trainee.optimizer.state_dict(), "lr_scheduler": trainee.lr_scheduler.state_dict()},
        folder / "optimizer.pt",
    )
    (folder / STATE_FILE).write_text(json.dumps(state))


def with_draws(
    steps: Iterable,
    cond_table: torch.Tensor,
    latent_chw: tuple[int, int, int],
    *,
    seed: int,
    rank: int,
    d: Mapping[str, Any],
    loss: LossSettings,
    num_train_timesteps: int,
    device,
) -> Iterator:
    """Each :class:`~fairskin.diffusion.feed.StepInputs` of ``steps`` with its ``draws``: the prompt drop from
    the step's shared generator (the same on every rank), y', noise and timesteps from the rank's own.
    ``cond_table`` (S + 1, L, D): the subclass prompts' embeddings, the empty prompt last."""
    for inputs in steps:
        inputs.draws = draw_step_inputs(
            cond_table,
            inputs.subclass,
            (len(inputs.rows), *latent_chw),
            shared=step_generator(seed, inputs.step),
            local=step_generator(seed, inputs.step, rank),
            prompt_drop_prob=d["prompt_drop_prob"],
            use_cbdm=loss.use_cbdm,
            include_self=loss.include_self,
            num_train_timesteps=num_train_timesteps,
            device=device,
        )
        yield inputs


def in_process_feed(
    plan,
    arrays,
    cond_table: torch.Tensor,
    *,
    start: int,
    seed: int,
    d: Mapping[str, Any],
    loss: LossSettings,
    num_train_timesteps: int,
    device,
) -> Iterator:
    """The steps ``start`` .. ``d["max_steps"] - 1`` of a fine-tune in one process (a generator trial): rank 0 of 1
    takes each whole global batch of the level-1 ``plan`` (:class:`~fairskin.data.stream.RunPlan`) over the cached
    ``arrays`` (latents (N, 2, C, h, w), subclass (N,)), with the draws of :func:`with_draws` — the steps a single
    Ray Train worker takes."""
    from fairskin.diffusion.feed import step_inputs

    if "latents" not in arrays:
        raise ValueError("an in-process fine-tune reads cached latents: set diffusion.cache_latents = true")
    batch_size = d["global_batch_size"]

    def plan_batch(step: int):
        positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        rows, weights = plan.lookup(positions)
        batch = {"position": positions, "row": rows, "weight": weights}
        return step_inputs(batch, arrays, rank=0, world=1, seed=seed, global_batch=batch_size)

    steps = (plan_batch(step) for step in range(start, d["max_steps"]))
    latent_chw = tuple(arrays["latents"].shape[2:])
    return with_draws(
        steps,
        cond_table,
        latent_chw,
        seed=seed,
        rank=0,
        d=d,
        loss=loss,
        num_train_timesteps=num_train_timesteps,
        device=device,
    )


def fine_tune(
    trainee: Trainee,
    scheduler,
    feed: Iterable,
    *,
    d: Mapping[str, Any],
    loss: LossSettings,
    vae=None,
    device="cpu",
    rank: int = 0,
    step_hooks: Sequence[StepHook] = (),
) -> Iterator[tuple[int, dict[str, Any], torch.Tensor]]:
    """Train one optimizer step per item of ``feed`` (``StepInputs`` with their draws); after each, yield
    (steps done, the step's metrics, the divergence flag).

    The metrics stay device tensors (no host sync per step): ``loss``, ``noise_loss``, ``regulariser``,
    ``grad_norm``, plus ``lr``, ``images_per_s`` (the host's pace, global batch / seconds) and
    ``prompt_dropped``. The flag (:func:`~fairskin.diffusion.losses.note_nonfinite`) holds the first step whose
    loss was not finite, 0 while all were; check it with ``check_finite_loss`` when a window ends.
    """
    autocast = autocast_dtype(d["mixed_precision"])
    first_bad = torch.zeros((), dtype=torch.long, device=device)
    last_time = time.perf_counter()
    for inputs in feed:
        for hook in step_hooks:
            hook(inputs.step, rank)
        latents = step_latents(inputs, vae, device)
        out, grad_norm, first_bad = train_step(
            trainee.model,
            trainee.optimizer,
            trainee.lr_scheduler,
            scheduler,
            latents,
            inputs.draws,
            inputs.weights.to(device),
            use_cbdm=loss.use_cbdm,
            tau=loss.tau,
            gamma=loss.gamma,
            autocast=autocast,
            max_grad_norm=d["max_grad_norm"],
            ema=trainee.ema,
            ema_decay=d["ema_decay"],
            trained=trainee.unet,
            first_bad=first_bad,
            step=inputs.step + 1,
        )
        now = time.perf_counter()
        metrics = {
            "loss": out.loss.detach(),
            "noise_loss": out.noise_part,
            "regulariser": out.regulariser_part,
            "lr": trainee.lr_scheduler.get_last_lr()[0],
            "grad_norm": grad_norm.detach(),
            "images_per_s": d["global_batch_size"] / max(now - last_time, 1e-9),
            "prompt_dropped": float(inputs.draws.dropped),
        }
        last_time = now
        yield inputs.step + 1, metrics, first_bad
