"""The ``base`` stage's stand-in VAE behaves like SD's: a point posterior and unit-variance scaled latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fairskin.data.stream import DecodedSet
from fairskin.data.synthetic import DISEASES, render_lesion_image
from fairskin.diffusion.base import train_tiny_vae
from fairskin.diffusion.models import build_tiny_sd, load_sd, save_sd
from fairskin.diffusion.step import encode_latents, pixels_to_tensor

GROUPS = ("African", "Asian", "Caucasian")


def _tiny_set(size: int = 32) -> DecodedSet:
    rows = [(g, d, fst) for g, fst in zip(GROUPS, (6, 3, 1)) for d in DISEASES[:2]]
    pixels = np.stack([render_lesion_image(fst, d, seed=k, size=size) for k, (g, d, fst) in enumerate(rows)])
    meta = pd.DataFrame({"group": [g for g, _, _ in rows], "disease": [d for _, d, _ in rows]})
    return DecodedSet(pixels, meta, GROUPS, tuple(DISEASES[:2]))


def test_the_stand_in_vae_has_a_point_posterior_and_unit_variance_scaled_latents(tmp_path):
    train = _tiny_set()
    parts = build_tiny_sd(image_size=32, seed=0)
    losses = train_tiny_vae(parts.vae, train, steps=3, batch_size=4, seed=0)
    assert len(losses) == 3 and all(np.isfinite(losses))
    x = pixels_to_tensor(train.pixels)
    with torch.no_grad():
        posterior = parts.vae.encode(x).latent_dist
    # Sampling must not hide the image: the posterior's std is tiny next to the means' spread.
    assert float(posterior.std.max()) < 1e-3 < float(posterior.mean.std())
    # The fitted factor brings the latents the UNet trains on to unit variance (fitted on these images).
    assert abs(float(encode_latents(parts.vae, x).std()) - 1.0) < 1e-3
    assert parts.vae.config.scaling_factor != 0.18215
    # Both survive the pipeline folder the variants fine-tune from.
    save_sd(parts, tmp_path / "pipeline")
    loaded = load_sd(str(tmp_path / "pipeline"))
    assert loaded.vae.config.scaling_factor == parts.vae.config.scaling_factor
    with torch.no_grad():
        assert float(loaded.vae.encode(x).latent_dist.std.max()) < 1e-3
