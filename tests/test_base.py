"""The ``base`` stage's stand-in VAE behaves like SD's: a point posterior and unit-variance scaled latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fairskin.data.stream import DecodedSet
from fairskin.data.synthetic import DISEASES, render_lesion_image
from fairskin.diffusion.base import encode_training_latents, subclass_prompts, train_base_unet, train_tiny_vae
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


def test_the_base_unet_reads_latents_encoded_once_and_leaves_the_vae_and_text_encoder_alone(monkeypatch):
    from fairskin.config import build_config

    train = _tiny_set()
    parts = build_tiny_sd(image_size=32, seed=0, zero_terminal_snr=True)
    train_tiny_vae(parts.vae, train, steps=2, batch_size=4, seed=0)
    # The table holds each row's own latent, in row order (batching changes only float rounding).
    table = encode_training_latents(parts.vae, train, batch_size=4)
    with torch.no_grad():
        one_by_one = torch.cat(
            [encode_latents(parts.vae, pixels_to_tensor(train.pixels[i : i + 1])) for i in range(len(train))]
        )
    assert table.shape == (len(train), 4, 8, 8)
    torch.testing.assert_close(table, one_by_one, atol=1e-4, rtol=1e-3)

    encodes = []
    real_encode = parts.vae.encode
    monkeypatch.setattr(parts.vae, "encode", lambda x: encodes.append(len(x)) or real_encode(x))
    parts.vae.zero_grad(set_to_none=True)  # the VAE's own training leaves its last step's gradients
    frozen = [p.detach().clone() for p in [*parts.vae.parameters(), *parts.text_encoder.parameters()]]
    unet_before = [p.detach().clone() for p in parts.unet.parameters()]
    prompts = subclass_prompts(build_config("smoke").diffusion.prompt_template, train.groups, train.diseases)
    losses = train_base_unet(parts, train, prompts, steps=3, batch_size=4, seed=0, lr=1e-3, snr_gamma=5.0)
    assert len(losses) == 3 and all(np.isfinite(losses))
    # One encoding pass over the rows, none per step; no gradient reaches the frozen parts.
    assert encodes == [len(train)]
    frozen_after = [*parts.vae.parameters(), *parts.text_encoder.parameters()]
    assert all(p.grad is None for p in frozen_after)
    assert all(torch.equal(a, b) for a, b in zip(frozen, frozen_after))
    assert any(not torch.equal(a, b) for a, b in zip(unet_before, parts.unet.parameters()))
    # A run drawing fewer rows than the set holds encodes them once too (no per-batch path left), still frozen.
    encodes.clear()
    train_base_unet(parts, train, prompts, steps=1, batch_size=4, seed=0, lr=1e-3)
    assert encodes == [len(train)] and all(p.grad is None for p in frozen_after)


def test_base_unets_train_side_by_side_on_ray_as_they_would_in_process(ray_session):
    """The stages train the base's and each control base's UNet in Ray tasks of one CPU, all at once
    (train_unets_on_ray): each comes back with the weights and losses of the same job run in this
    process on one thread, and the jobs are not mixed up."""
    import copy

    from fairskin.config import build_config
    from fairskin.diffusion.base import train_unets_on_ray, unet_job, unet_training_steps
    from fairskin.runtime import set_thread_count

    train = _tiny_set()
    parts = build_tiny_sd(image_size=32, seed=0, zero_terminal_snr=True)
    train_tiny_vae(parts.vae, train, steps=2, batch_size=4, seed=0)
    prompts = subclass_prompts(build_config("smoke").diffusion.prompt_template, train.groups, train.diseases)
    jobs = {
        "base": unet_job(parts, train, prompts, steps=7, batch_size=4, seed=0, lr=1e-3, snr_gamma=5.0),
        "without_african": unet_job(
            copy.deepcopy(parts),
            train.without_group("African"),
            prompts,
            steps=7,
            batch_size=4,
            seed=0,
            lr=1e-3,
            snr_gamma=5.0,
        ),
    }
    expected = {name: copy.deepcopy(job) for name, job in jobs.items()}
    threads = torch.get_num_threads()
    set_thread_count(1)
    try:
        expected_losses = {name: list(unet_training_steps(job)) for name, job in expected.items()}
    finally:
        set_thread_count(threads)
    losses = train_unets_on_ray(jobs, description="test")
    for name in jobs:
        assert len(losses[name]) == 7
        np.testing.assert_allclose(losses[name], expected_losses[name], rtol=1e-4, atol=1e-6)
        ours, theirs = jobs[name].unet.state_dict(), expected[name].unet.state_dict()
        assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours)
        assert not jobs[name].unet.training
    # Different data, so different weights: the results went back to their own jobs.
    assert losses["base"] != losses["without_african"]


def _terminal_signal(scheduler) -> float:
    """How much of x_0 the last training timestep keeps: sqrt(alpha_bar_T)."""
    return float(scheduler.alphas_cumprod[-1].sqrt())


def test_zero_terminal_snr_base_hides_the_image_at_the_last_timestep_and_every_sampler_inherits_it(tmp_path):
    """The fault (issue 13, the study base): SD's betas keep sqrt(alpha_bar_T) = 0.068 of x_0 at t = T, so
    for 16 x 16 latents the noisy latent's mean still shows the image's mean colour (the noise's mean has
    std 1/16) and the UNet learns the skin tone from the noise, not from the prompt. With
    ``zero_terminal_snr`` x_T is pure noise, the UNet predicts v, and the samplers start at t = T."""
    from fairskin.config import ConfigError, build_config
    from fairskin.diffusion.losses import prediction_target
    from fairskin.diffusion.sampler import make_scheduler

    assert _terminal_signal(build_tiny_sd(image_size=32, seed=0).noise_scheduler) > 0.05  # SD's schedule
    parts = build_tiny_sd(image_size=32, seed=0, zero_terminal_snr=True)
    scheduler = parts.noise_scheduler
    assert _terminal_signal(scheduler) < 1e-6
    latents = torch.randn(2, 4, 8, 8) + torch.tensor([3.0, -3.0]).view(2, 1, 1, 1)  # two very different colours
    noise = torch.randn_like(latents)
    last = torch.full((2,), scheduler.config.num_train_timesteps - 1)
    assert torch.allclose(scheduler.add_noise(latents, noise, last), noise, atol=1e-5)
    t = torch.tensor([10, 500])
    assert torch.allclose(prediction_target(scheduler, latents, noise, t), scheduler.get_velocity(latents, noise, t))

    # The schedule travels in the saved base; the samplers built from it keep it and start at t = T.
    save_sd(parts, tmp_path / "pipeline")
    loaded = load_sd(str(tmp_path / "pipeline"))
    for name in ("ddim", "dpm", "euler"):
        sampler = make_scheduler(name, loaded.noise_scheduler.config)
        assert sampler.config.prediction_type == "v_prediction" and sampler.config.rescale_betas_zero_snr
        sampler.set_timesteps(20)
        assert int(sampler.timesteps[0]) == 999
    with pytest.raises(ValueError, match="generation.scheduler 'pndm' cannot sample a zero-terminal-SNR"):
        make_scheduler("pndm", loaded.noise_scheduler.config)
    with pytest.raises(ConfigError, match="generation.scheduler = 'pndm'"):
        build_config("study", overrides=["generation.scheduler=pndm"])
    with pytest.raises(ConfigError, match="diffusion.zero_terminal_snr"):
        build_config("paper", overrides=["diffusion.zero_terminal_snr=true"])
    assert build_config("study").diffusion.zero_terminal_snr and not build_config("demo").diffusion.zero_terminal_snr


def test_base_snr_gamma_keys_the_base_only_when_set_and_needs_the_tiny_model():
    from fairskin.config import ConfigError, build_config
    from fairskin.pipeline import STAGES
    from fairskin.pipeline.keyed import stage_key

    def keys(config):
        return [stage_key(name, config, STAGES[name].reads_for(config)) for name in ("base", "control_base")]

    unweighted = build_config("study", overrides=["diffusion.base_snr_gamma=null"])
    assert unweighted.diffusion.base_snr_gamma is None
    # Unset, the key is what it was before the field existed: existing runs roots keep their bases.
    assert keys(unweighted) == [stage_key(name, unweighted, STAGES[name].reads) for name in ("base", "control_base")]
    study = build_config("study")
    assert study.diffusion.base_snr_gamma == 5.0 and study.diffusion.base_unet_steps == 5000
    assert all(a != b for a, b in zip(keys(unweighted), keys(study)))
    with pytest.raises(ConfigError, match="diffusion.base_snr_gamma"):
        build_config("paper", overrides=["diffusion.base_snr_gamma=5"])
    with pytest.raises(ConfigError, match="base_snr_gamma"):
        build_config("study", overrides=["diffusion.base_snr_gamma=0"])


def test_a_classifier_built_while_a_background_stage_loads_its_vae_gets_real_initialised_weights(tmp_path, monkeypatch):
    """CI of stop 24: `base` (a background thread) loads the VAE with diffusers' ``from_pretrained``, which
    patches ``nn.Module.register_parameter`` (meta device) and ``torch.nn.init`` (no init) for the whole
    process while it builds the model; a classifier built at that moment by `reference` on the main thread
    came out on the meta device (or would silently skip its initialisation). Every model build and load
    now takes one process-wide lock. Here the VAE load is held inside diffusers' patched window while
    another thread builds a classifier."""
    import threading

    from diffusers import AutoencoderKL

    from fairskin.classify.models import build_classifier
    from fairskin.config import build_config
    from fairskin.diffusion.base import _parts_with_vae

    build_tiny_sd(image_size=32, seed=0).vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    original_register = torch.nn.Module.register_parameter
    original_from_config = AutoencoderKL.from_config.__func__
    inside, release = threading.Event(), threading.Event()

    def from_config_held_open(cls, *args, **kwargs):
        if torch.nn.Module.register_parameter is not original_register:  # inside diffusers' empty-weights window
            inside.set()
            release.wait(timeout=10)
        return original_from_config(cls, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_config", classmethod(from_config_held_open))
    config = build_config("smoke")
    loader = threading.Thread(target=_parts_with_vae, args=(config, 32, tmp_path / "vae"))
    loader.start()
    assert inside.wait(timeout=60), "the VAE load never entered diffusers' empty-weights window"
    built = {}

    def build():
        torch.manual_seed(7)
        built["model"] = build_classifier("tiny", ["a", "b"], 32)

    builder = threading.Thread(target=build)
    builder.start()
    builder.join(timeout=2.0)  # on the old code it finishes here, inside the window
    release.set()
    loader.join(timeout=60)
    builder.join(timeout=60)
    assert not loader.is_alive() and not builder.is_alive()
    torch.manual_seed(7)
    alone = build_classifier("tiny", ["a", "b"], 32)
    for (name, p), q in zip(built["model"].named_parameters(), alone.parameters()):
        assert p.device.type == "cpu", f"{name} was built on {p.device}"
        assert torch.equal(p, q), f"{name} differs from the same classifier built alone"
