"""One fine-tune step as pure functions: the same code in the Ray Train worker and in ``benchmarks/gpu.py``.

The worker (:func:`fairskin.diffusion.finetune.train_loop_per_worker`) takes its rows of the plan's
global batch, then calls

    latents = gather_latents(arrays, rows, flips, vae, device)   # cached, or encoded now (cache_latents=false)
    draws   = draw_step_inputs(..., shared=step_generator(seed, step), local=step_generator(seed, step, rank))
    out, grad_norm, first_bad = train_step(model, optimizer, ...)  # autocast forward, backward, clip, AdamW, EMA

and ``benchmarks/gpu.py`` times exactly these calls at SD v1-4 size. Weights stay float32; with
``diffusion.mixed_precision=bf16`` the forward pass runs under ``torch.autocast(dtype=bfloat16)`` on
the device's type (CPU autocast supports bf16 too, so the tests run this path on CPU).

This module imports torch and the engine's loss code only: no ray, mlflow or pydantic, so that it
runs on a machine that has none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fairskin.diffusion.losses import LossParts, note_nonfinite, other_subclasses, training_loss

# diffusion.mixed_precision -> autocast dtype. No fp16: without a GradScaler fp16 gradients underflow
# silently, and every GPU the paper preset targets (A100, H100, H200) has bf16 (fp32's exponent range).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16}


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of ``diffusion.mixed_precision`` (None: full float32)."""
    if mixed_precision not in AUTOCAST_DTYPES:
        raise ValueError(f"mixed_precision {mixed_precision!r}: expected one of {sorted(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[mixed_precision]


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled VAE posterior means (B, C, h, w) float32 of float pixels (B, 3, H, W) in [-1, 1]: the
    encode-every-step path (``diffusion.cache_latents=false``), in the VAE's own dtype (float32)."""
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def gather_latents(arrays, rows: np.ndarray, flips: np.ndarray, vae, device) -> torch.Tensor:
    """The step's latents (B, C, h, w) float32 on ``device``: the cached ``arrays["latents"][rows, flips]``
    (N, 2, C, h, w), or, with a ``vae``, ``arrays["pixels"][rows]`` (uint8 N, H, W, 3) flipped where
    ``flips`` is 1 and encoded now."""
    if vae is not None:
        x = pixels_to_tensor(arrays["pixels"][rows]).to(device)
        x = torch.where(torch.from_numpy(flips.astype(bool)).view(-1, 1, 1, 1).to(device), x.flip(-1), x)
        return encode_latents(vae, x)
    return torch.from_numpy(np.array(arrays["latents"][rows, flips])).to(device)


def step_latents(inputs, vae, device) -> torch.Tensor:
    """The latents (b, C, h, w) float32 on ``device`` of a :class:`fairskin.diffusion.feed.StepInputs`: its
    gathered cached latents, or its uint8 pixels flipped where ``flips`` is 1 and encoded now."""
    if inputs.latents is not None:
        return inputs.latents.to(device)
    x = inputs.pixels.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    x = torch.where(torch.from_numpy(inputs.flips.astype(bool)).view(-1, 1, 1, 1).to(device), x.flip(-1), x)
    return encode_latents(vae, x)


def step_generator(seed: int, step: int, rank: int | None = None) -> torch.Generator:
    """A CPU generator seeded by (seed, step[, rank]): a resumed run repeats the draws of the steps it re-runs."""
    parts = [seed, step] + ([] if rank is None else [rank])
    return torch.Generator().manual_seed(int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> 1))


@dataclass
class StepDraws:
    """The random inputs of one step (on the training device)."""

    dropped: bool  # the whole batch's prompt replaced by the empty one
    cond: torch.Tensor  # (B, L, D) text embeddings of y (or of "")
    cond_other: torch.Tensor | None  # (B, L, D) of y' (CBDM, prompt kept), else None
    noise: torch.Tensor  # like the latents, float32
    timesteps: torch.Tensor  # (B,) int64


def draw_step_inputs(
    cond_table: torch.Tensor,
    subclass: torch.Tensor,
    latent_shape,
    *,
    shared: torch.Generator,
    local: torch.Generator,
    prompt_drop_prob: float,
    use_cbdm: bool,
    include_self: bool,
    num_train_timesteps: int,
    device: torch.device | str,
) -> StepDraws:
    """Draw one step's prompt drop (from ``shared``: the same on every rank), y', noise and timesteps
    (from ``local``), in this order, on CPU generators; then move them to ``device``.

    ``cond_table`` (S + 1, L, D) holds the S subclass prompts' embeddings and the empty prompt's last;
    ``subclass`` (B,) int64 on CPU.
    """
    n = int(subclass.shape[0])
    num_subclasses = cond_table.shape[0] - 1
    dropped = torch.rand(1, generator=shared).item() < prompt_drop_prob
    cond = cond_table[-1:].expand(n, -1, -1) if dropped else cond_table[subclass.to(cond_table.device)]
    cond_other = None
    if use_cbdm and not dropped:
        cond_other = cond_table[other_subclasses(subclass, num_subclasses, local, include_self).to(cond_table.device)]
    noise = torch.randn(tuple(latent_shape), generator=local).to(device)
    timesteps = torch.randint(0, num_train_timesteps, (n,), generator=local).to(device)
    return StepDraws(dropped, cond, cond_other, noise, timesteps)


def loss_under_autocast(
    model,
    scheduler,
    latents: torch.Tensor,
    draws: StepDraws,
    weights: torch.Tensor,
    *,
    use_cbdm: bool,
    tau: float,
    gamma: float,
    autocast: torch.dtype | None,
) -> LossParts:
    """The batch loss, the forward pass under ``torch.autocast(latents.device.type, autocast)``."""
    with torch.autocast(latents.device.type, dtype=autocast, enabled=autocast is not None):
        return training_loss(
            model,
            scheduler,
            latents,
            draws.cond,
            draws.cond_other,
            weights,
            noise=draws.noise,
            timesteps=draws.timesteps,
            use_cbdm=use_cbdm,
            tau=tau,
            gamma=gamma,
            prompt_dropped=draws.dropped,
        )


def train_step(
    model,
    optimizer,
    lr_scheduler,
    scheduler,
    latents: torch.Tensor,
    draws: StepDraws,
    weights: torch.Tensor,
    *,
    use_cbdm: bool,
    tau: float,
    gamma: float,
    autocast: torch.dtype | None,
    max_grad_norm: float,
    ema=None,
    ema_decay: float | None = None,
    trained=None,
    first_bad: torch.Tensor | None = None,
    step: int = 0,
):
    """One optimizer step: loss (autocast forward), backward, gradient clip, AdamW, LR schedule, EMA.

    ``model``: the (DDP-wrapped) UNet whose forward is called; ``trained``: the module whose parameters
    the EMA follows (the unwrapped UNet; default ``model``); ``ema``: the EMA UNet or None.
    ``lr_scheduler`` may be None. ``first_bad`` is the device-side divergence flag of
    :func:`~fairskin.diffusion.losses.note_nonfinite`, updated for ``step`` (1-based) without a sync.
    Returns (loss parts, gradient norm tensor, first_bad).
    """
    out = loss_under_autocast(
        model, scheduler, latents, draws, weights, use_cbdm=use_cbdm, tau=tau, gamma=gamma, autocast=autocast
    )
    if first_bad is not None:
        first_bad = note_nonfinite(first_bad, out.loss, step)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    if ema is not None:
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list((trained or model).parameters()), 1.0 - ema_decay)
    return out, grad_norm, first_bad
