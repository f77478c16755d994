"""Level 2 on Ray Train at smoke size: 2-worker DDP with an injected failure, resume equality."""

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from fairskin.config import build_config
from fairskin.data.stream import decode_local
from fairskin.diffusion.base import subclass_prompts
from fairskin.diffusion.finetune import cache_training_set, finetune_variant
from fairskin.diffusion.losses import training_loss
from fairskin.diffusion.models import load_sd
from fairskin.diffusion.variants import get_variant
from fairskin.pipeline import base_pipeline_folder, run_pipeline
from fairskin.tracking import Tracker

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("ft") / "runs"
    config = build_config("smoke", overrides=[f"runtime.runs_root={root}", "diffusion.cpus_per_worker=0.5",
                                              "diffusion.max_failures=1"])
    results = run_pipeline(config, stages=["base"], echo=lambda *_: None).results
    train = decode_local(results["prepare"].path / "shards")
    return config, base_pipeline_folder(results["base"]), train


def _fixed_batch_loss(unet_folder, base, train, config):
    """Noise loss of a UNet on one fixed batch (fixed rows, noise, timesteps; no regulariser)."""
    parts = load_sd(str(base))
    if unet_folder is not None:
        parts = load_sd(str(unet_folder))
    rows, cond = cache_training_set(parts, train, subclass_prompts(config.diffusion.prompt_template, train.groups,
                                                                   train.diseases))
    g = torch.Generator().manual_seed(123)
    idx = torch.randint(0, len(train), (32,), generator=g).numpy()
    latents = torch.from_numpy(rows.columns["latents"][idx, 0])
    with torch.no_grad():
        out = training_loss(parts.unet, parts.noise_scheduler, latents, torch.from_numpy(cond)[train.subclass_id[idx]],
                            None, torch.ones(32), noise=torch.randn(latents.shape, generator=g),
                            timesteps=torch.randint(100, 900, (32,), generator=g), use_cbdm=False)
    return float(out.loss)


def test_two_workers_recover_from_a_failure_and_log_each_step_once(smoke_base, tmp_path):
    from diffusers import StableDiffusionPipeline

    config, base, train = smoke_base
    config = config.model_copy(update={"diffusion": config.diffusion.model_copy(update={
        "max_steps": 12, "checkpoint_every": 4, "num_workers": 2, "learning_rate": 3e-3})})
    tracker = Tracker.from_config(config, experiment="finetune-test")
    run = tracker.start("fairskin_s")
    summary = finetune_variant(config, get_variant("fairskin_s"), base, train, tmp_path / "fairskin_s",
                               tracking={"uri": tracker.tracking_uri, "run_id": run.run_id}, fail_at_step=6)
    assert summary["steps"] == 12 and summary["workers"] == 2 and summary["attempts"] == 2
    assert np.isfinite(summary["final_loss"])
    history = MlflowClient(tracker.tracking_uri).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 13))  # steps 5-6 re-ran, logged once
    regulariser = MlflowClient(tracker.tracking_uri).get_metric_history(run.run_id, "regulariser")
    assert any(m.value > 0 for m in regulariser)  # CBDM is on for fairskin_s
    folder = tmp_path / "fairskin_s" / "pipeline"
    before = _fixed_batch_loss(None, base, train, config)
    after = _fixed_batch_loss(folder, base, train, config)
    assert np.isfinite(after) and after < before
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    images = pipe(["African people psoriasis"], num_inference_steps=2, height=32, width=32,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_interrupted_and_resumed_run_ends_with_the_same_weights(smoke_base, tmp_path):
    config, base, train = smoke_base
    config = config.model_copy(update={"diffusion": config.diffusion.model_copy(update={
        "max_steps": 8, "checkpoint_every": 3, "num_workers": 1})})
    variant = get_variant("fairskin_s", apply="sampler")
    straight = finetune_variant(config, variant, base, train, tmp_path / "straight")
    resumed = finetune_variant(config, variant, base, train, tmp_path / "resumed", fail_at_step=4)
    assert straight["attempts"] == 1 and resumed["attempts"] == 2
    a = load_sd(str(tmp_path / "straight" / "pipeline")).unet.state_dict()
    b = load_sd(str(tmp_path / "resumed" / "pipeline")).unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base_unet = load_sd(str(base)).unet.state_dict()
    assert not all(torch.equal(a[k], base_unet[k]) for k in a)  # it did train


def test_variants_fine_tuned_at_once_end_as_when_fine_tuned_alone(smoke_base, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from fairskin.diffusion.finetune import cache_for

    config, base, train = smoke_base
    config = config.model_copy(update={"diffusion": config.diffusion.model_copy(update={
        "max_steps": 4, "checkpoint_every": 4, "num_workers": 1})})
    alone = finetune_variant(config, get_variant("fairskin_s"), base, train, tmp_path / "alone")
    cache = cache_for(config, base, train)
    with ThreadPoolExecutor(max_workers=2) as pool:  # as the finetune stage runs diffusion.parallel_variants
        jobs = {name: pool.submit(finetune_variant, config, get_variant(name), base, train, tmp_path / name,
                                  cache=cache) for name in ("fairskin_s", "vanilla")}
        results = {name: job.result() for name, job in jobs.items()}
    assert results["fairskin_s"]["steps"] == alone["steps"] == 4 and results["vanilla"]["steps"] == 4
    a = load_sd(str(tmp_path / "alone" / "pipeline")).unet.state_dict()
    b = load_sd(str(tmp_path / "fairskin_s" / "pipeline")).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    v = load_sd(str(tmp_path / "vanilla" / "pipeline")).unet.state_dict()
    assert not all(torch.equal(a[k], v[k]) for k in a)
