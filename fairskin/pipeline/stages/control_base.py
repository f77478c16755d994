"""The ``control_base`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import EXTERNAL, STAGES, Stage, StageContext, register_stage
from fairskin.pipeline.stages.vae import vae_folder

CONTROL_BASES_FILE = "control_bases.json"


def _control_base_body(ctx: StageContext) -> Mapping[str, Any]:
    """One base per group a ``control_drop_<group>`` variant drops (:meth:`FairSkinConfig.dropped_groups`),
    trained without that group (:func:`fairskin.diffusion.base.build_control_bases`), beside the base's
    own UNet; none when no control is configured. A pretrained model cannot forget a group: there the
    control's base is the pretrained pipeline and only its fine-tune drops the group (``base_knows_group`` = 1)."""
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    from fairskin.config import group_slug
    from fairskin.io import atomic_write_json

    dropped = config.dropped_groups()
    bases: dict[str, str] = {}
    summary: dict[str, Any] = {"control_bases": len(dropped)}
    if dropped and config.diffusion.model == "tiny":
        from fairskin.data.stream import decode_local
        from fairskin.diffusion.base import build_control_bases

        train = decode_local(inputs["prepare"].path / "shards")
        results = build_control_bases(
            config, train, vae_folder(inputs["vae"]), dropped, out, reporter=ctx.progress("control_base")
        )
        for group, result in results.items():
            folder = f"without_{group_slug(group)}"
            summary.update({f"{folder}_{k}": v for k, v in result.items()})
            bases[group] = f"{folder}/pipeline"  # relative: the stage folder is renamed
    elif dropped:
        bases = {group: str(config.diffusion.model) for group in dropped}
        summary["base_knows_group"] = 1
    atomic_write_json(out / CONTROL_BASES_FILE, bases)
    return summary


def control_base_folders(result: StageResult) -> dict[str, Path]:
    """dropped group -> the pipeline folder its ``control_drop`` generators start from."""
    import json

    recorded = json.loads((result.path / CONTROL_BASES_FILE).read_text())
    return {g: (result.path / p if (result.path / p).is_dir() else Path(p)) for g, p in recorded.items()}


def _dropped_groups_key(config: FairSkinConfig, cache) -> str | None:
    return ",".join(config.dropped_groups()) or None


# Derived from the variants, not a path: which control bases exist (so adding a variant that drops
# nothing leaves the stage's key alone).
EXTERNAL["diffusion.dropped_groups"] = _dropped_groups_key

register_stage(
    Stage(
        "control_base",
        reads=STAGES["base"].reads,
        reads_unless=STAGES["base"].reads_unless,
        inputs=("prepare", "vae"),
        needs_ray=True,
        # 2: its UNet reads latents encoded once, as the base's does
        # 3: from the vae stage's VAE, not the base's folder: it trains while the base's UNet does
        version=3,
        body=_control_base_body,
        external=("diffusion.model", "diffusion.dropped_groups"),
        log=lambda run, result: run.log_metrics(result.summary),
    )
)
