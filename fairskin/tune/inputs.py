"""Where a study's inputs come from when the caller does not name them: the pipeline's stages.

:func:`pipeline_inputs` is the one place that knows the stage layout. With a ``generate``
stage registered, it runs the pipeline up to it (prepare, base, finetune, generate: each
skipped when already done) and takes each variant's pool (``fairskin.pipeline.stages.generate.pool_folders``).
Without one (older trees) it runs ``prepare`` and writes a **procedural stand-in pool**
(:func:`fairskin.data.prepare.write_synthetic_pool`, ``generation.images_per_subclass``
images per subclass), shared by every variant: it exercises the whole tuning path, but its
images are not a diffusion model's, so its figures say nothing about the variants.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from fairskin.config import FairSkinConfig
from fairskin.tune.study import StudyError


def pipeline_inputs(
    config: FairSkinConfig, variants: Sequence[str], echo: Callable[[str], None] = print
) -> tuple[Path, dict[str, Path]]:
    """(real shard folder, variant -> pool shard folder), running the stages that are missing."""
    from fairskin.pipeline import STAGES, run_pipeline

    if "generate" in STAGES:
        from fairskin.pipeline.stages.generate import pool_folders

        outcome = run_pipeline(config, stages=["generate"], echo=echo)
        folders = pool_folders(outcome.results["generate"])
        missing = [v for v in variants if v not in folders]
        if missing:
            raise StudyError(
                f"the generate stage wrote no pool for variant(s) {missing} (it has {sorted(folders)}); "
                "add them to diffusion.variants"
            )
        return outcome.results["prepare"].path / "shards", {v: folders[v] for v in variants}
    outcome = run_pipeline(config, stages=["prepare"], echo=echo)
    pool = standin_pool(config, echo)
    echo(f"no `generate` stage yet: every variant uses the procedural stand-in pool {pool}")
    return outcome.results["prepare"].path / "shards", {v: pool for v in variants}


STANDIN_POOLS = "standin-pools"


def standin_key(config: FairSkinConfig) -> str:
    """The stand-in pool's key: the data config, the seed and the pool size."""
    key_src = json.dumps(
        {"data": config.section("data"), "seed": config.runtime.seed, "per": config.generation.images_per_subclass},
        sort_keys=True,
    )
    return hashlib.sha256(key_src.encode()).hexdigest()[:12]


def standin_pool(config: FairSkinConfig, echo: Callable[[str], None] = print) -> Path:
    """A procedural pool keyed by the data config, seed and size; written once (atomically)."""
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.io import atomic_directory

    per_subclass = config.generation.images_per_subclass
    final = config.runtime.runs_root / "tune" / STANDIN_POOLS / standin_key(config)
    if not (final / "shards" / "index.json").exists():
        echo(f"writing a procedural stand-in pool ({per_subclass} per subclass) to {final}")
        with atomic_directory(final, replace=True) as tmp:
            write_synthetic_pool(config, tmp / "shards", per_subclass)
    return final / "shards"
