"""The ``vae`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage


def _vae_body(ctx: StageContext) -> Mapping[str, Any]:
    """tiny: train the stand-in VAE (:func:`fairskin.diffusion.base.build_vae`), the one part the base UNet
    and every control base share. A pretrained pipeline brings its own VAE: nothing to do."""
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    if config.diffusion.model != "tiny":
        return {"pretrained": 1}
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.base import build_vae

    return build_vae(config, decode_local(inputs["prepare"].path / "shards"), out, reporter=ctx.progress("vae"))


def vae_folder(result: StageResult) -> Path:
    """The trained VAE the ``vae`` stage wrote (tiny model only)."""
    from fairskin.diffusion.base import VAE_FOLDER

    return result.path / VAE_FOLDER


register_stage(
    Stage(
        "vae",
        reads=("diffusion.model", "diffusion.base_vae_steps", "diffusion.global_batch_size", "runtime.seed"),
        inputs=("prepare",),
        body=_vae_body,
        log=lambda run, result: run.log_metrics(result.summary),
    )
)
