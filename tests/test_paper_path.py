"""The `paper` preset's GPU code path, run on CPU at tiny size, so that a dtype fault fails here and not
on a rented GPU.

What runs is what the paper preset runs, but for the device: an SD-shaped pipeline (SD v1-4's block
types, depths, 8x VAE and PNDM scheduler at a few channels, random weights) saved as a diffusers folder
and loaded by path with ``use_safetensors=True``; the fine-tune through Ray Train (``finetune_variant``)
with float32 weights under bf16 autocast (CPU autocast supports bf16), EMA, gradient checkpointing and
``cache_latents=false`` (the VAE encodes every step), for a CBDM variant with level-1 weights; then pool
images through ``fairskin.diffusion.generate`` with the paper's sampler (PNDM) and classifier-free
guidance.

What CPU cannot check: device placement (a tensor left on the CPU while the model is on CUDA, a CPU
generator handed to a CUDA op, pinned memory and non-blocking copies) and CUDA-only kernels (flash /
memory-efficient SDPA under bf16). Only a run on a GPU (``benchmarks/gpu.py``) checks those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fairskin.config import PRESETS, build_config
from fairskin.diffusion.models import build_sd, encode_prompts, save_sd, sd_shaped_tiny_configs
from fairskin.diffusion.step import autocast_dtype, draw_step_inputs, encode_latents, train_step

PAPER = PRESETS["paper"]()
IMAGE = 64  # the smallest size an SD-shaped model takes (8 x 8 latents, three UNet down-samplings)


@pytest.fixture(scope="module")
def tiny_sd():
    return build_sd(sd_shaped_tiny_configs(IMAGE), seed=0)


def test_paper_preset_is_the_path_tested_here():
    """The settings this module stands in for: if the preset changes, change the tests with it."""
    d, g = PAPER["diffusion"], PAPER["generation"]
    assert d["mixed_precision"] == "bf16" and d["use_gpu"] is True
    assert g.get("scheduler", "pndm") == "pndm" and g["guidance_scale"] > 1


def test_fp16_training_is_refused_with_the_reason():
    """No GradScaler, so no fp16 training: the config says so instead of training with underflowing grads."""
    from fairskin.config import ConfigError

    with pytest.raises(ConfigError, match="mixed_precision"):
        build_config("smoke", overrides=["diffusion.mixed_precision=fp16"])
    with pytest.raises(ValueError, match="fp16"):
        autocast_dtype("fp16")


@pytest.mark.parametrize("kind", ["vanilla", "cbdm", "cbdm_g0"])
def test_step_function_under_bf16_autocast_keeps_float32_weights(tiny_sd, kind):
    """The step the worker and benchmarks/gpu.py share, on the SD-shaped model: encode every step, bf16
    autocast, gradient checkpointing, EMA; weights, gradients, EMA and optimizer state stay float32."""
    unet = type(tiny_sd.unet).from_config(tiny_sd.unet.config)
    unet.load_state_dict(tiny_sd.unet.state_dict())
    unet.enable_gradient_checkpointing()
    unet.train()
    ema = type(unet).from_config(unet.config)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(tiny_sd.noise_scheduler.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    cond_table = encode_prompts(tiny_sd.tokenizer, tiny_sd.text_encoder, ["a", "b", "c", ""])
    pixels = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    latents = encode_latents(tiny_sd.vae, pixels)
    assert latents.dtype == torch.float32 and latents.shape == (2, 4, IMAGE // 8, IMAGE // 8)
    g = torch.Generator().manual_seed(0)
    draws = draw_step_inputs(
        cond_table,
        torch.tensor([0, 2]),
        latents.shape,
        shared=g,
        local=g,
        prompt_drop_prob=0.0,
        use_cbdm=kind != "vanilla",
        include_self=False,
        num_train_timesteps=1000,
        device="cpu",
    )
    flag = torch.zeros((), dtype=torch.long)
    out, grad_norm, flag = train_step(
        unet,
        optimizer,
        None,
        scheduler,
        latents,
        draws,
        torch.ones(2),
        use_cbdm=kind != "vanilla",
        tau=1.0,
        gamma=0.0 if kind == "cbdm_g0" else 0.25,
        autocast=autocast_dtype("bf16"),
        max_grad_norm=1.0,
        ema=ema,
        ema_decay=0.9,
        first_bad=flag,
        step=1,
    )
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32 and int(flag) == 0
    assert torch.isfinite(grad_norm) and float(grad_norm) > 0
    assert (out.regulariser > 0) == (kind != "vanilla")
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    assert all(s.dtype == torch.float32 for st in optimizer.state.values() for s in st.values() if s.ndim)
    assert all(p.dtype == torch.float32 for p in ema.parameters())
    assert any(not torch.equal(before[k], v) for k, v in ema.state_dict().items())  # the EMA moved


def test_bf16_weights_without_autocast_fail_on_cpu_too(tiny_sd):
    """The fault of the old `finetune_step.py --sd14` (weights cast to bf16, float32 noise, no autocast) is
    a dtype mismatch that CPU raises as a GPU would: such a path can be caught here."""
    from diffusers import DDPMScheduler

    unet = type(tiny_sd.unet).from_config(tiny_sd.unet.config).to(torch.bfloat16)
    latents = torch.randn(1, 4, IMAGE // 8, IMAGE // 8, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    cond_table = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=torch.bfloat16)
    draws = draw_step_inputs(
        cond_table,
        torch.tensor([0]),
        latents.shape,
        shared=g,
        local=g,
        prompt_drop_prob=0.0,
        use_cbdm=False,
        include_self=True,
        num_train_timesteps=1000,
        device="cpu",
    )
    with pytest.raises(RuntimeError, match="(?i)dtype|type"):
        train_step(
            unet,
            torch.optim.AdamW(unet.parameters()),
            None,
            DDPMScheduler(),
            latents,
            draws,
            torch.ones(1),
            use_cbdm=False,
            tau=1.0,
            gamma=0.25,
            autocast=None,
            max_grad_norm=1.0,
        )


@pytest.mark.ray
def test_paper_path_fine_tunes_and_samples_at_tiny_size(ray_session, tiny_sd, tmp_path):
    """Ray Train fine-tune of fairskin_s (CBDM + SQRS weights) on 2 DDP workers (the paper preset runs
    several) from an SD-shaped folder loaded by path, bf16 autocast, EMA, gradient checkpointing, encode
    every step; then PNDM + CFG pool images."""
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.finetune import finetune_variant, latest_state
    from fairskin.diffusion.generate import ItemGenerator, WorkItem
    from fairskin.diffusion.models import load_sd
    from fairskin.pipeline import run_pipeline
    from fairskin.pipeline.stages.base import base_pipeline_folder

    folder = save_sd(tiny_sd, tmp_path / "sd-shaped")
    assert list((folder / "unet").glob("*.safetensors")) and not list(folder.rglob("*.bin"))
    assert (folder / "scheduler" / "scheduler_config.json").read_text().count("PNDMScheduler") == 1
    d = PAPER["diffusion"]
    config = build_config(
        "smoke",
        overrides=[
            f"runtime.runs_root={tmp_path / 'runs'}",
            f"data.image_size={IMAGE}",
            f"diffusion.model={folder}",
            f"diffusion.mixed_precision={d['mixed_precision']}",
            "diffusion.ema_decay=0.999",
            "diffusion.gradient_checkpointing=true",
            "diffusion.cache_latents=false",
            "diffusion.max_steps=4",
            "diffusion.checkpoint_every=2",
            "diffusion.num_workers=2",
            "diffusion.cpus_per_worker=0.5",
            "diffusion.variants=[fairskin_s]",
            "diffusion.prompt_drop_prob=0.1",
            "generation.scheduler=pndm",
            f"generation.guidance_scale={PAPER['generation']['guidance_scale']}",
            "generation.inference_steps=3",
            "generation.batch_size=2",
        ],
    )
    results = run_pipeline(config, stages=["base"], echo=lambda *_: None).results  # prepare, and base's pointer
    base = base_pipeline_folder(results["base"])
    assert base.resolve() == folder.resolve()
    train = decode_local(results["prepare"].path / "shards")
    assert train.pixels.shape[1:] == (IMAGE, IMAGE, 3)

    out = tmp_path / "ft"
    summary = finetune_variant(config, config.diffusion.variant("fairskin_s"), base, train, out)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    tuned = load_sd(str(out / "pipeline"))  # use_safetensors=True: the written folder has no pickles
    assert not list((out / "pipeline").rglob("*.bin"))
    start = tiny_sd.unet.state_dict()
    after = tuned.unet.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(start[k], after[k]) for k in start)  # the EMA of 4 steps moved off the base
    # The EMA, not the raw weights, was written: it moved (1 - 0.999^4) of the way, so far less than the UNet.
    from diffusers import UNet2DConditionModel

    checkpoint, state = latest_state(out.parent / f".ray-{out.name}")
    assert state["step"] == 4
    with checkpoint.as_directory() as ckpt:
        raw = UNet2DConditionModel.from_pretrained(Path(ckpt) / "unet", use_safetensors=True).state_dict()
    moved = sum(float((after[k] - start[k]).abs().sum()) for k in start)
    raw_moved = sum(float((raw[k] - start[k]).abs().sum()) for k in start)
    assert 0 < moved < 0.05 * raw_moved

    g = config.generation
    worker = ItemGenerator(
        {"fairskin_s": str(out / "pipeline")},
        g.model_dump(mode="json"),
        config.diffusion.prompt_template,
        0,
        IMAGE,
        (tuple(config.data.group_names), tuple(config.data.diseases)),
        threads=1,
    )
    item = WorkItem("fairskin_s", config.data.group_names[0], config.data.diseases[0], 0, 2)
    images, seeds = worker.images(item)
    assert type(worker._pipe("fairskin_s").scheduler).__name__ == "PNDMScheduler"
    assert images.shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.uint8 and len(set(seeds)) == 2
    assert images.std() > 0 and not np.array_equal(images[0], images[1])
