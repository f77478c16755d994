"""The ``base`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.pipeline.stages.vae import vae_folder


def _base_body(ctx: StageContext) -> Mapping[str, Any]:
    """tiny: train a base UNet over the ``vae`` stage's VAE (stands in for pretrained SD).
    Otherwise: record the pretrained pipeline folder every variant starts from."""
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    from fairskin.io import atomic_write_json

    if config.diffusion.model != "tiny":
        from fairskin.diffusion.models import load_sd

        load_sd(config.diffusion.model, config.diffusion.allow_download)  # fail here, clearly, if absent
        atomic_write_json(out / "base.json", {"pipeline": config.diffusion.model})
        return {"pretrained": 1}
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.base import build_base

    train = decode_local(inputs["prepare"].path / "shards")
    summary = build_base(config, train, vae_folder(inputs["vae"]), out, reporter=ctx.progress("base"))
    atomic_write_json(out / "base.json", {"pipeline": "pipeline"})  # relative: the folder is renamed
    return summary


def base_pipeline_folder(result: StageResult) -> Path:
    """The pipeline the base stage stands for: its own folder, or the pretrained folder / hub id."""
    import json

    recorded = json.loads((result.path / "base.json").read_text())["pipeline"]
    own = result.path / recorded
    return own if own.is_dir() else Path(recorded)


register_stage(
    Stage(
        "base",
        reads=(
            "diffusion.model",
            "diffusion.base_unet_steps",
            "diffusion.global_batch_size",
            "diffusion.learning_rate",
            "diffusion.prompt_template",
            "diffusion.zero_terminal_snr",
            "runtime.seed",
        ),
        inputs=("prepare", "vae"),
        body=_base_body,
        external=("diffusion.model",),
        reads_unless=(("diffusion.base_snr_gamma", None),),
        # 2: the VAE is an autoencoder (cosine-decayed rate) with a fixed posterior std and a fitted scaling factor
        # 3: the base UNet reads latents encoded once (same values up to float rounding of the batching)
        # 4: the VAE comes from the vae stage; the UNet trains in a Ray task on one thread
        version=4,
        needs_ray=True,
        background=True,
        log=lambda run, result: run.log_metrics(result.summary),
    )
)
