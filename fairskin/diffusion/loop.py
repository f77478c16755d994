"""The fine-tune loop, once: the Ray Train worker (:func:`fairskin.diffusion.finetune.train_loop_per_worker`) and a
generator study's trial (:func:`fairskin.tune.generator.run_generator_trial`) both read it top to bottom as

    trainee, state = load_trainee(base, checkpoint, d, device)          # UNet (+ EMA), AdamW, LR schedule
    feed = with_draws(steps, cond_table, latent_chw, seed=..., ...)     # each step's noise, t, y', prompt drop
    for done, metrics in fine_tune(trainee, scheduler, feed, ...):      # one optimizer step per item
        ... at a checkpoint step: save_checkpoint(folder, trainee, state) and report

and differ only in where the steps come from (Ray Data's plan shard, the shard feed, or the level-1 plan in
process) and what a checkpoint does (``ray.train.report``, or scoring a pool for Tune).

The method's side of a step, its loss (the noise-prediction loss, CBDM's regulariser with its tau and gamma),
is resolved once from the variant's spec (:func:`loss_settings`); what else a method changes (which parameters
train, per-sample loss weights and the state they carry, how its weights are saved and what its result is) are
its hooks (:mod:`fairskin.methods.hooks`), built by :func:`method_hooks` and held by the :class:`Trainee`. Each
step's randomness comes from generators seeded by (seed, step[, rank]), so a resumed run repeats exactly the
draws of the steps it re-runs.

``step_hooks``: callables ``hook(step, rank)`` run before each step (0-based): a place for a profiler, or
for a test's fault injection (the tests register theirs; nothing here sleeps or fails on purpose).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.diffusion.step import autocast_dtype, draw_step_inputs, step_generator, step_latents, train_step
from fairskin.methods import build_hooks
from fairskin.methods.hooks import HookContext, TrainingHook

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


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _broadcast_from_rank0(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    out = tensor.clone()
    dist.broadcast(out, src=0)
    return out


def method_hooks(
    variant: Mapping[str, Any],
    *,
    seed: int,
    groups: Sequence[str],
    num_diseases: int,
    rank: int = 0,
    world: int = 1,
    device="cpu",
    max_steps: int | None = None,
) -> list[TrainingHook]:
    """The variant's method hooks (a ``VariantSpec`` dump's ``hooks``) for this worker: with collectives over the
    process group when several workers train (Ray Train's ``torch.distributed`` group), identities on one."""
    import torch.distributed as dist

    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    context = HookContext(
        seed=seed,
        groups=tuple(groups),
        num_diseases=num_diseases,
        max_steps=max_steps,
        rank=rank,
        world=world,
        device=device,
        **({"all_reduce_sum": _all_reduce_sum, "broadcast_from_rank0": _broadcast_from_rank0} if distributed else {}),
    )
    return build_hooks(dict(variant), context)


@dataclass
class Trainee:
    """What a fine-tune steps: ``model`` (whose forward runs: the UNet, or its DDP wrapper on several workers),
    ``unet`` (the unwrapped UNet: checkpoints and the EMA follow it), ``ema`` (or None), the optimizer and the
    LR schedule, and the method's ``hooks``."""

    model: Any
    unet: Any
    ema: Any
    optimizer: Any
    lr_scheduler: Any
    hooks: list[TrainingHook] = field(default_factory=list)


def prepare_unet(unet, ema, d: Mapping[str, Any], keep_ema: bool = True) -> tuple[Any, Any]:
    """Gradient checkpointing and the EMA copy as ``d`` (a ``diffusion`` config dump) asks: returns
    (``unet``, ``ema`` or None); a restored ``ema`` is kept, else a frozen copy of ``unet`` is made.
    ``keep_ema=False`` (an adapter method's hooks): no EMA whatever ``d`` says."""
    if d["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    if not keep_ema:
        return unet, None
    if d["ema_decay"] and ema is None:
        ema = type(unet).from_config(unet.config)
        ema.load_state_dict(unet.state_dict())
    if ema is not None:
        ema.requires_grad_(False)
    return unet, ema


def build_optimizer(parameters, d: Mapping[str, Any], saved: dict | None = None) -> tuple[Any, Any]:
    """AdamW at ``d["learning_rate"]`` over the ``parameters`` that require gradients (all of a plain fine-tune,
    the adapters of an adapter method), with diffusers' constant-with-warm-up schedule; ``saved`` (a checkpoint's
    ``optimizer.pt``) restores both states. Returns (optimizer, lr_scheduler)."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=d["learning_rate"])
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
    hooks: Sequence[TrainingHook] = (),
) -> tuple[Trainee, dict | None]:
    """The UNet of the pipeline folder ``base`` (or of ``checkpoint``, with its EMA, optimizer and LR-schedule
    state, and the hooks' weights and state) on ``device``, configured by the method's ``hooks`` and ready to
    train; ``wrap`` (Ray Train's ``prepare_model``) wraps it for several workers.
    Returns (trainee, the checkpoint's ``state.json`` or None)."""
    from diffusers import UNet2DConditionModel

    from fairskin.model_lock import model_lock

    ema, saved, state = None, None, None
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    with model_lock:
        if checkpoint is not None and (checkpoint / "unet").is_dir():
            unet = UNet2DConditionModel.from_pretrained(checkpoint / "unet", use_safetensors=True)
        else:  # a fresh start, or a hook that saves its own weights (an adapter on the base)
            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
        if checkpoint is not None and d["ema_decay"] and (checkpoint / "ema").is_dir():
            ema = UNet2DConditionModel.from_pretrained(checkpoint / "ema", use_safetensors=True)
    for hook in hooks:
        hook.configure_unet(unet)
    if checkpoint is not None:
        for hook in hooks:
            hook.load_weights(unet, checkpoint)
        saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        state = json.loads((checkpoint / STATE_FILE).read_text())
        for hook, hook_state in zip(hooks, state.get("hooks", [{}] * len(hooks))):
            hook.load_state_dict(hook_state)
    unet, ema = prepare_unet(unet, ema, d, keep_ema=all(hook.keeps_ema for hook in hooks))
    if ema is not None:
        ema.to(device)
    unet = unet.to(device).train()
    model = wrap(unet) if wrap is not None else unet
    raw = model.module if hasattr(model, "module") else model
    rate = d["learning_rate"]
    for hook in hooks:
        rate = hook.learning_rate(rate)
    optimizer, lr_scheduler = build_optimizer(model.parameters(), {**d, "learning_rate": rate}, saved)
    return Trainee(model, raw, ema, optimizer, lr_scheduler, list(hooks)), state


def save_checkpoint(folder: Path, trainee: Trainee, state: Mapping[str, Any]) -> None:
    """UNet (or what the method's hooks save instead) and EMA as safetensors, optimizer and LR-schedule state, and
    ``state`` (JSON, with the hooks' states under ``hooks``) into ``folder``."""
    saved_by_hook = [hook.save_weights(trainee.unet, folder) for hook in trainee.hooks]
    if not any(saved_by_hook):
        trainee.unet.save_pretrained(folder / "unet", safe_serialization=True)
    if trainee.ema is not None:
        trainee.ema.save_pretrained(folder / "ema", safe_serialization=True)
    torch.save(
        {"optimizer": trainee.optimizer.state_dict(), "lr_scheduler": trainee.lr_scheduler.state_dict()},
        folder / "optimizer.pt",
    )
    if trainee.hooks:
        state = {**state, "hooks": [hook.state_dict() for hook in trainee.hooks]}
    (folder / STATE_FILE).write_text(json.dumps(state))


def save_result(parts, trainee: Trainee, folder: Path) -> Path:
    """The fine-tune's result as a diffusers pipeline folder: the base ``parts`` with the trained UNet (its EMA
    when kept), or, for an adapter method, the base UNet with the adapter's file beside it (the hook exports it)."""
    from fairskin.diffusion.models import save_sd

    base_unet = parts.unet
    if not any(hook.adapter for hook in trainee.hooks):
        parts.unet = trainee.ema if trainee.ema is not None else trainee.unet
    try:
        save_sd(parts, folder)
    finally:
        parts.unet = base_unet
    for hook in trainee.hooks:
        hook.export(trainee.unet, folder)
    return folder


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
    rank: int = 0,
    world: int = 1,
) -> Iterator:
    """The steps ``start`` .. ``d["max_steps"] - 1`` of a fine-tune in one process (a generator trial): rank 0 of 1
    takes each whole global batch of the level-1 ``plan`` (:class:`~fairskin.data.stream.RunPlan`) over the cached
    ``arrays`` (latents (N, 2, C, h, w), subclass (N,)), with the draws of :func:`with_draws` — the steps a single
    Ray Train worker takes. ``rank`` of ``world``: that rank's share of each batch, as a Train worker's feed."""
    from fairskin.diffusion.feed import step_inputs

    if "latents" not in arrays:
        raise ValueError("an in-process fine-tune reads cached latents: set diffusion.cache_latents = true")
    batch_size = d["global_batch_size"]

    def plan_batch(step: int):
        positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        rows, weights = plan.lookup(positions)
        batch = {"position": positions, "row": rows, "weight": weights}
        return step_inputs(batch, arrays, rank=rank, world=world, seed=seed, global_batch=batch_size)

    steps = (plan_batch(step) for step in range(start, d["max_steps"]))
    latent_chw = tuple(arrays["latents"].shape[2:])
    return with_draws(
        steps,
        cond_table,
        latent_chw,
        seed=seed,
        rank=rank,
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
    ``prompt_dropped``, and what the method's hooks return from ``after_step``. The hooks' per-sample weights
    multiply the step's level-1 weights. The flag (:func:`~fairskin.diffusion.losses.note_nonfinite`) holds the first step whose
    loss was not finite, 0 while all were; check it with ``check_finite_loss`` when a window ends.
    """
    autocast = autocast_dtype(d["mixed_precision"])
    first_bad = torch.zeros((), dtype=torch.long, device=device)
    last_time = time.perf_counter()
    for inputs in feed:
        for hook in step_hooks:
            hook(inputs.step, rank)
        latents = step_latents(inputs, vae, device)
        weights = inputs.weights.to(device)
        for hook in trainee.hooks:
            factor = hook.sample_weights(inputs.step, inputs.subclass)
            if factor is not None:
                weights = weights * factor.to(device)
        out, grad_norm, first_bad = train_step(
            trainee.model,
            trainee.optimizer,
            trainee.lr_scheduler,
            scheduler,
            latents,
            inputs.draws,
            weights,
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
        hook_metrics: dict[str, Any] = {}
        for hook in trainee.hooks:
            hook_metrics.update(hook.after_step(inputs.step, out.per_sample, inputs.subclass))
        now = time.perf_counter()
        metrics = {
            "loss": out.loss.detach(),
            "noise_loss": out.noise_part,
            "regulariser": out.regulariser_part,
            "lr": trainee.lr_scheduler.get_last_lr()[0],
            "grad_norm": grad_norm.detach(),
            "images_per_s": d["global_batch_size"] / max(now - last_time, 1e-9),
            "prompt_dropped": float(inputs.draws.dropped),
            **hook_metrics,
        }
        last_time = now
        yield inputs.step + 1, metrics, first_bad
