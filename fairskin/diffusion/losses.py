"""Level 2: the noise-prediction loss and the CBDM class-diversity regulariser.

For a batch of B latents x_0 with prompts y (embeddings ``cond``), noise eps, timesteps t:

    x_t   = scheduler.add_noise(x_0, eps, t)
    h     = eps_theta(x_t, t, y)                 target: eps (or v, per the scheduler's config)
    noise = mse_b(h, target)                     mse_b = mean over a sample's elements

CBDM (Qin et al., CVPR 2023; official code qym7/CBDM-pytorch) with one subclass y' per sample,
drawn uniformly over all subclasses, y included (the official code's fine-tune branch, and the
paper's sum over Y; y' != y is an option), and w_t = tau * t / T:

    h'    = eps_theta(x_t, t, y')
    reg_b = w_t * mse_b(h, sg(h')) + gamma * w_t * mse_b(sg(h), h')

With ``snr_gamma`` (Min-SNR-gamma, Hang et al. 2023, as diffusers' training scripts' ``--snr_gamma``)
noise_b is first multiplied by min(SNR_t, gamma) / SNR_t (epsilon) or min(SNR_t, gamma) / (SNR_t + 1)
(v): the x_0 error then weighs min(SNR_t, gamma) at every t, capping the nearly clean timesteps.

The per-sample loss (noise_b + reg_b) is multiplied by the sample weight (level 1, ``apply=loss``;
ones otherwise) and the batch loss is the sum divided by B (not by the sum of weights). When
the prompt is dropped for the whole batch (classifier-free guidance), there is no regulariser.
With gamma > 0, h and h' share one batched UNet call (both need gradients); with gamma = 0,
h' is computed under ``no_grad`` (1.33x a plain step instead of 2x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element but the batch dim: (B, ...) x2 -> (B,)."""
    return F.mse_loss(a.float(), b.float(), reduction="none").flatten(1).mean(1)


def prediction_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: eps, or v for ``prediction_type="v_prediction"``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}: expected epsilon or v_prediction")


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (B,) of the noise term: min(SNR_t, gamma) / SNR_t for epsilon, / (SNR_t + 1) for v.

    SNR_t = alpha_bar_t / (1 - alpha_bar_t) as diffusers' ``training_utils.compute_snr`` (not imported: that
    module pulls accelerate in, 10 s, and the device machine's benchmark imports this one). At a zero
    terminal SNR the epsilon weight's 0/0 is taken as 1 (its limit)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1.0 - alphas_cumprod).clamp_min(torch.finfo(torch.float32).tiny)
    capped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return torch.where(snr > 0, capped / snr.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(snr))
    if kind == "v_prediction":
        return capped / (snr + 1.0)
    raise ValueError(f"unsupported prediction_type {kind!r}: expected epsilon or v_prediction")


def cbdm_time_weight(timesteps: torch.Tensor, num_train_timesteps: int, tau: float) -> torch.Tensor:
    """w_t = tau * t / T, shape (B,)."""
    return tau * timesteps.float() / float(num_train_timesteps)


def cbdm_regulariser(h: torch.Tensor, h_other: torch.Tensor, w_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample CBDM term (B,): w_t * mse(h, sg(h')) + gamma * w_t * mse(sg(h), h')."""
    pull = per_sample_mse(h, h_other.detach())
    push = per_sample_mse(h.detach(), h_other) if gamma > 0 else torch.zeros_like(pull)
    return w_t * pull + gamma * w_t * push


@dataclass
class LossParts:
    """The batch loss (scalar, to backpropagate) and its two parts as detached 0-dim tensors
    (``noise_part``, ``regulariser_part``: reading them does not wait for the device; ``noise`` /
    ``regulariser`` give floats and do), and each sample's noise term (``per_sample`` (B,), detached: what a
    method's hook sees, e.g. FairDiffusion's group losses)."""

    loss: torch.Tensor
    noise_part: torch.Tensor
    regulariser_part: torch.Tensor
    per_sample: torch.Tensor | None = None  # (B,) each sample's noise term, detached, before any weight

    @property
    def noise(self) -> float:
        return float(self.noise_part)

    @property
    def regulariser(self) -> float:
        return float(self.regulariser_part)


def training_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    cond_other: torch.Tensor | None,
    weights: torch.Tensor,
    *,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    use_cbdm: bool,
    tau: float = 1.0,
    gamma: float = 0.25,
    prompt_dropped: bool = False,
    snr_gamma: float | None = None,
) -> LossParts:
    """One batch's loss.

    latents (B, C, h, w); cond/cond_other (B, L, D) text embeddings of y and y'; weights (B,);
    noise like latents; timesteps (B,) int. With ``prompt_dropped`` the caller has already
    replaced ``cond`` by the empty prompt, and the regulariser is skipped. ``snr_gamma``: Min-SNR-gamma
    weighting of the noise term (None: unweighted).
    """
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = prediction_target(scheduler, latents, noise, timesteps)
    with_reg = use_cbdm and not prompt_dropped and cond_other is not None
    if with_reg and gamma > 0:
        both = unet(
            torch.cat([noisy, noisy]),
            torch.cat([timesteps, timesteps]),
            encoder_hidden_states=torch.cat([cond, cond_other]),
        ).sample
        h, h_other = both.chunk(2)
    else:
        h = unet(noisy, timesteps, encoder_hidden_states=cond).sample
        h_other = None
        if with_reg:
            with torch.no_grad():
                h_other = unet(noisy, timesteps, encoder_hidden_states=cond_other).sample
    noise_term = per_sample_mse(h, target)
    if snr_gamma is not None:
        noise_term = noise_term * min_snr_weight(scheduler, timesteps, snr_gamma)
    reg_term = torch.zeros_like(noise_term)
    if with_reg:
        w_t = cbdm_time_weight(timesteps, scheduler.config.num_train_timesteps, tau)
        reg_term = cbdm_regulariser(h, h_other, w_t, gamma)
    loss = ((noise_term + reg_term) * weights.float()).sum() / latents.shape[0]
    return LossParts(loss, noise_term.mean().detach(), torch.as_tensor(reg_term).mean().detach(), noise_term.detach())


def other_subclasses(
    subclass: torch.Tensor, num_subclasses: int, generator: torch.Generator, include_self: bool = True
) -> torch.Tensor:
    """One y' per sample (B,) int64: uniform over all ``num_subclasses`` subclasses, y included
    (``include_self``, the official CBDM fine-tune draw), or uniform over the others (y' != y)."""
    if include_self:
        return torch.randint(0, num_subclasses, subclass.shape, generator=generator)
    offset = torch.randint(1, num_subclasses, subclass.shape, generator=generator)
    return (subclass + offset) % num_subclasses


# --------------------------------------------------------------------------- divergence


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the message names the first such step."""


def note_nonfinite(first_bad: torch.Tensor, loss: torch.Tensor, step: int) -> torch.Tensor:
    """Device-side divergence flag, updated without a host sync: ``first_bad`` (a 0-d int64 tensor,
    0 while every loss was finite) becomes ``step`` (1-based) at the first non-finite ``loss``."""
    hit = (first_bad == 0) & ~torch.isfinite(loss.detach())
    return torch.where(hit, torch.full_like(first_bad, int(step)), first_bad)


def check_finite_loss(first_bad: torch.Tensor, what: str = "training") -> None:
    """Read the flag of :func:`note_nonfinite` (one sync: call it every N steps, e.g. before a
    checkpoint, so a diverged state is never saved) and stop with an error naming the step."""
    step = int(first_bad.item())
    if step:
        raise NonFiniteLossError(
            f"{what}: the loss is not finite (NaN or inf) from step {step} on; stopped before "
            "the next checkpoint. Lower diffusion.learning_rate, or check the inputs of that step"
        )
