"""Sampling: a scheduler by short name and one prompt's images from a pipeline.

The pool generation (:mod:`fairskin.diffusion.generate`) and ``benchmarks/gpu.py`` share these. This
module imports only numpy, torch and diffusers (no ray, mlflow or pydantic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
NO_ZERO_SNR_SAMPLERS = ("pndm",)  # names whose diffusers class lacks rescale_betas_zero_snr (config refuses them too)


def make_scheduler(name: str, base_config: Mapping[str, Any]):
    """A diffusers sampling scheduler by short name (``pndm``, ``ddim``, ``euler``, ``dpm``, ...),
    configured like the pipeline's own (``base_config`` = ``pipe.scheduler.config``)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"generation.scheduler {name!r} is unknown; expected one of {sorted(SCHEDULERS)}")
    if base_config.get("rescale_betas_zero_snr") and name in NO_ZERO_SNR_SAMPLERS:
        usable = sorted(set(SCHEDULERS) - set(NO_ZERO_SNR_SAMPLERS))
        raise ValueError(
            f"generation.scheduler {name!r} cannot sample a zero-terminal-SNR model "
            f"(diffusion.zero_terminal_snr); expected one of {usable}"
        )
    extra = {"skip_prk_steps": True} if name == "pndm" else {}  # as SD v1-4's own PNDM config
    return getattr(diffusers, SCHEDULERS[name]).from_config(base_config, **extra)


def generate_images(pipe, prompt: str, seeds: Sequence[int], cfg, height: int, width: int) -> np.ndarray:
    """Sample ``len(seeds)`` images of one prompt in one batch: uint8 (N, height, width, 3). ``cfg``: the
    ``generation`` config, or anything with ``inference_steps`` and ``guidance_scale``.

    Image i starts from the latent noise of ``torch.Generator().manual_seed(seeds[i])``.
    """
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        out = pipe(
            prompt=[prompt] * len(seeds),
            generator=generators,
            num_inference_steps=cfg.inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=height,
            width=width,
            output_type="np",
        )
    return np.clip(np.rint(out.images * 255.0), 0, 255).astype(np.uint8)
