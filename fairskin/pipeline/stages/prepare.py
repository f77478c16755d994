"""The ``prepare`` stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.provenance import TAG_REAL, shard_fingerprint
from fairskin.tracking import RunHandle


def _prepare_body(ctx: StageContext) -> Mapping[str, Any]:
    config, out = ctx.config, ctx.out
    from fairskin.data.prepare import COUNTS_FILE, prepare_dataset
    from fairskin.metrics.plots import plot_subclass_counts, save_image_grid

    summary = prepare_dataset(config, out)
    import pandas as pd

    table = pd.read_csv(out / COUNTS_FILE)
    plot_subclass_counts(
        table, out / "subclass_counts.png", title=f"{config.data.source}: images per subclass (train / val / test)"
    )
    _preview(out, config, save_image_grid)
    return summary


def _preview(out: Path, config: FairSkinConfig, save_image_grid: Callable) -> None:
    """One training image per (group, disease) as a grid PNG, for a first look in MLflow."""
    from fairskin.data.shards import load_decoded

    pixels, meta = load_decoded(out / "shards", verify=False, splits=["train"])
    images, groups, diseases = [], config.data.group_names, config.data.diseases
    for group in groups:
        for disease in diseases:
            hit = meta.index[(meta["group"] == group) & (meta["disease"] == disease)]
            images.append(pixels[hit[0]] if len(hit) else pixels[0] * 0)
    save_image_grid(images, groups, diseases, out / "preview.png", title="one training image per subclass")


def _prepare_log(run: RunHandle, result: StageResult) -> None:
    s = result.summary
    run.log_metrics({k: v for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for name in ("subclass_counts.csv", "subclass_counts.png", "preview.png"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "prepare")


register_stage(
    Stage(
        "prepare",
        reads=("data", "runtime.seed"),
        body=_prepare_body,
        log=_prepare_log,
        external=("data.csv_path", "data.image_root"),
        provenance=lambda result: {TAG_REAL: shard_fingerprint(result.path / "shards")},
    )
)
