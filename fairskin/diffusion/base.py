"""The ``base`` stage (demo/smoke only): a stand-in for pretrained Stable Diffusion.

A random VAE cannot reconstruct anything, so the tiny VAE is first trained briefly on the
training images (reconstruction + a small KL term), then a base UNet is trained on all
training data without balancing. Every variant fine-tunes from this pipeline folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairskin.config import FairSkinConfig
from fairskin.data.stream import DecodedSet
from fairskin.diffusion.losses import training_loss
from fairskin.diffusion.models import build_tiny_sd, encode_prompts, prompt_for, save_sd
from fairskin.diffusion.step import pixels_to_tensor  # noqa: F401 (also imported from here)
from fairskin.progress import progress_bar


def subclass_prompts(template: str, groups, diseases) -> list[str]:
    """Prompts in subclass-id order (group-major), as the stream's ``subclass`` ids index them."""
    return [prompt_for(template, g, d) for g in groups for d in diseases]


def train_tiny_vae(vae, train: DecodedSet, steps: int, batch_size: int, seed: int, lr: float = 1e-3,
                   progress: bool = False) -> list[float]:
    """Reconstruction (MSE) + 1e-6 KL training of the tiny VAE; returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    losses = []
    vae.train()
    for _ in progress_bar(range(steps), total=steps, description="base: VAE", enabled=progress):
        rows = torch.randint(0, len(train), (batch_size,), generator=gen).numpy()
        x = pixels_to_tensor(train.pixels[rows])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    vae.eval()
    return losses


def train_base_unet(parts, train: DecodedSet, prompts: list[str], steps: int, batch_size: int, seed: int,
                    lr: float, progress: bool = False) -> list[float]:
    """Plain noise-prediction training on uniformly drawn training rows (no balancing)."""
    gen = torch.Generator().manual_seed(seed + 1)
    cond_table = encode_prompts(parts.tokenizer, parts.text_encoder, prompts + [""])
    subclass = torch.from_numpy(train.subclass_id)
    optimizer = torch.optim.AdamW(parts.unet.parameters(), lr=lr)
    scale = parts.vae.config.scaling_factor
    losses = []
    parts.unet.train()
    for _ in progress_bar(range(steps), total=steps, description="base: UNet", enabled=progress):
        rows = torch.randint(0, len(train), (batch_size,), generator=gen)
        with torch.no_grad():
            latents = parts.vae.encode(pixels_to_tensor(train.pixels[rows.numpy()])).latent_dist.sample(
                generator=gen) * scale
        drop = torch.rand(1, generator=gen).item() < 0.1
        cond = cond_table[-1:].expand(batch_size, -1, -1) if drop else cond_table[subclass[rows]]
        out = training_loss(parts.unet, parts.noise_scheduler, latents, cond, None, torch.ones(batch_size),
                            noise=torch.randn(latents.shape, generator=gen),
                            timesteps=torch.randint(0, parts.noise_scheduler.config.num_train_timesteps,
                                                    (batch_size,), generator=gen),
                            use_cbdm=False)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.unet.parameters(), 1.0)
        optimizer.step()
        losses.append(float(out.loss.detach()))
    parts.unet.eval()
    return losses


def build_base(config: FairSkinConfig, train: DecodedSet, out: Path) -> dict[str, Any]:
    """Train the tiny VAE, then the base UNet; write the pipeline folder ``out/pipeline``."""
    d = config.diffusion
    torch.manual_seed(config.runtime.seed)
    parts = build_tiny_sd(image_size=train.pixels.shape[1], seed=config.runtime.seed)
    vae_losses = train_tiny_vae(parts.vae, train, d.base_vae_steps, d.global_batch_size, config.runtime.seed,
                                progress=config.runtime.progress)
    prompts = subclass_prompts(d.prompt_template, train.groups, train.diseases)
    unet_losses = train_base_unet(parts, train, prompts, d.base_unet_steps, d.global_batch_size,
                                  config.runtime.seed, lr=d.learning_rate, progress=config.runtime.progress)
    save_sd(parts, out / "pipeline")
    np.savetxt(out / "vae_loss.txt", vae_losses)
    np.savetxt(out / "unet_loss.txt", unet_losses)
    tail = max(1, len(unet_losses) // 10)
    return {"vae_loss_first": vae_losses[0] if vae_losses else float("nan"),
            "vae_loss_last": float(np.mean(vae_losses[-tail:])) if vae_losses else float("nan"),
            "unet_loss_first": unet_losses[0] if unet_losses else float("nan"),
            "unet_loss_last": float(np.mean(unet_losses[-tail:])) if unet_losses else float("nan")}


def build_control_base(config: FairSkinConfig, base: Path, train: DecodedSet, group: str,
                       out: Path) -> dict[str, Any]:
    """A base that never saw ``group``: the base's trained VAE and text encoder, and a UNet from the
    same initial weights trained exactly as the base's (steps, batch, seed) on ``train`` without the
    group's rows. Writes ``out/pipeline``; the start of every ``control_drop_<group>`` generator.

    The VAE is shared on purpose: it is an unconditional autoencoder (SD's own VAE is group-agnostic
    too), and keeping it fixed means the control differs from vanilla only in what the UNet learnt to
    draw for each prompt, which is the knowledge the control removes.
    """
    from fairskin.diffusion.models import load_sd

    d = config.diffusion
    parts = load_sd(str(base))
    parts.unet = build_tiny_sd(image_size=train.pixels.shape[1], seed=config.runtime.seed).unet
    without = train.without_group(group)
    prompts = subclass_prompts(d.prompt_template, train.groups, train.diseases)
    unet_losses = train_base_unet(parts, without, prompts, d.base_unet_steps, d.global_batch_size,
                                  config.runtime.seed, lr=d.learning_rate, progress=config.runtime.progress)
    save_sd(parts, out / "pipeline")
    np.savetxt(out / "unet_loss.txt", unet_losses)
    tail = max(1, len(unet_losses) // 10)
    return {"rows": len(without), "rows_dropped": len(train) - len(without),
            "unet_loss_last": float(np.mean(unet_losses[-tail:])) if unet_losses else float("nan")}
