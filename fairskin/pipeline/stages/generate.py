"""The ``generate`` stage."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.config import ConfigError, FairSkinConfig
from fairskin.pipeline.keyed import StageResult, stages_root
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.tracking import RunHandle
from fairskin.tune.spaces import pipeline_space

# The settings a pool's bytes depend on (cpus_per_actor sets each item's thread count); not the judge's,
# FID's or the actor count, which a changed value must not make the pools be generated again for.
GENERATE_READS = tuple(
    f"generation.{field}"
    for field in (
        "images_per_subclass",
        "guidance_scale",
        "inference_steps",
        "scheduler",
        "batch_size",
        "dtype",
        "channels_last",
        "use_gpu",
        "cpus_per_actor",
    )
) + (
    "diffusion.variants",
    "diffusion.custom_variants",
    "diffusion.repeat_seeds",
    "diffusion.prompt_template",
    "data.image_size",
    "data.groups",
    "data.diseases",
)


def _generate_body(ctx: StageContext) -> Mapping[str, Any]:
    """Each generator's pool (P images per subclass) on a Ray actor pool, or in this process
    (``generation.executor``); ``provenance.json`` holds each pool's content fingerprint beside its fine-tune's.

    A pool already in the store (:mod:`fairskin.pipeline.store`: same generator, seed, weights and sampling
    settings under an earlier stage key) is linked, not generated again. Items are written to a work folder named
    by the stage key, outside the stage's temporary folder, so a killed run resumes with the items it had
    finished; complete pools are then moved into the store and linked into the stage folder.
    """
    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    import json
    import os
    import shutil

    from fairskin.diffusion.generate import generate_pools
    from fairskin.diffusion.variants import fine_tuned_generators, pool_ids
    from fairskin.io import atomic_write_json
    from fairskin.pipeline.stage import STAGES
    from fairskin.pipeline.store import STORE_RECORD, link_stored, pool_folders, stored_record
    from fairskin.provenance import shard_fingerprint, split_pool_id

    work = ctx.resume
    generators = fine_tuned_generators(config.diffusion)
    names = pool_ids(generators, config.generation.pool_seeds)  # K pools per generator
    finetuned = json.loads((inputs["finetune"].path / "fingerprints.json").read_text())
    weights = {p: finetuned[split_pool_id(p)[0]] for p in names}
    stage = STAGES["generate"]
    stored = pool_folders(config, weights, stage.reads_for(config), stage.version, redo=ctx.redo)
    todo = {
        p: inputs["finetune"].path / split_pool_id(p)[0] / "pipeline" for p in names if stored_record(stored[p]) is None
    }
    started = time.time()
    images = {"count": 0}

    def on_item(entry: Mapping[str, Any]) -> None:
        images["count"] += entry["rows"]

    if todo:
        made = generate_pools(config, todo, work, on_item=on_item, reporter=ctx.progress("generate"))
        for g, folder in made.items():  # preview and record first, then one rename: a stored pool is complete
            _pool_preview(config, folder, g)
            record = {"pool": g, "weights": weights[g], "fingerprint": shard_fingerprint(folder)}
            atomic_write_json(folder / STORE_RECORD, record)
            shutil.rmtree(stored[g], ignore_errors=True)
            stored[g].parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder, stored[g])
    seconds = time.time() - started
    fingerprints = {g: record.get("fingerprint") for g, record in link_stored(out, stored).items()}
    for g, folder in _mixed_pools(config, {g: out / g for g in names}, work).items():
        os.replace(folder, out / g)
        _pool_preview(config, out / g, g)
        fingerprints[g] = shard_fingerprint(out / g)
    for g, fingerprint in fingerprints.items():  # pools stored before their records held these
        if not (out / g / "preview.png").is_file():
            _pool_preview(config, out / g, g)
        fingerprints[g] = fingerprint or shard_fingerprint(out / g)
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(
        out / PROVENANCE_FILE,
        {g: {"pool": fp, "finetune": finetuned.get(split_pool_id(g)[0], "")} for g, fp in fingerprints.items()},
    )
    return {
        "images_generated": images["count"],
        "pools_generated": len(todo),
        "pools_reused": len(names) - len(todo),
        "generate_seconds": seconds,
        "images_per_s": images["count"] / seconds if seconds > 0 and images["count"] else 0.0,
    }


def _mixed_pools(config: FairSkinConfig, folders: Mapping[str, Path], work: Path) -> dict[str, Path]:
    """Each ``control_mix_<group>_<pct>`` generator's pool, mixed from the same repeat's vanilla and
    ``control_drop_<group>`` pools (:func:`fairskin.diffusion.mix_pool.mix_pool`); kept when already made."""
    import shutil

    from fairskin.config import CONTROL_DROP_PREFIX, group_slug, is_mix_control, parse_mix_control
    from fairskin.data.shards import INDEX_FILE, Vocabulary
    from fairskin.diffusion.mix_pool import mix_pool
    from fairskin.diffusion.variants import generators, pool_noise_seed
    from fairskin.provenance import generator_id, pool_id, split_generator_id

    out = {}
    for generator in generators(config.diffusion):
        variant, repeat = split_generator_id(generator)
        if not is_mix_control(variant):
            continue
        slug, pct = parse_mix_control(variant)
        for k in config.generation.pool_seeds:  # the pools of pool seed k mix the sources' pools of the same seed
            name = pool_id(generator, k)
            folder = work / name
            if not (folder / INDEX_FILE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                group = next(g for g in config.data.group_names if group_slug(g) == slug)
                mix_pool(
                    folders[pool_id(generator_id("vanilla", repeat), k)],
                    folders[pool_id(generator_id(CONTROL_DROP_PREFIX + slug, repeat), k)],
                    folder,
                    generator=name,
                    group=group,
                    fraction=pct / 100,
                    seed=pool_noise_seed(config.diffusion, name),
                    vocab=Vocabulary(tuple(config.data.group_names), tuple(config.data.diseases)),
                )
            out[name] = folder
    return out


def _pool_preview(config: FairSkinConfig, folder: Path, variant: str) -> None:
    """The first pool image of every subclass as a grid PNG (``preview.png`` beside the shards)."""
    from fairskin.data.shards import load_decoded
    from fairskin.metrics.plots import save_image_grid

    pixels, meta = load_decoded(folder, verify=False)
    groups, diseases = config.data.group_names, config.data.diseases
    first = meta.groupby(["group", "disease"]).head(1)
    lookup = {(r.group, r.disease): i for i, r in zip(first.index, first.itertuples())}
    images = [pixels[lookup[(g, d)]] for g in groups for d in diseases]
    save_image_grid(
        images, groups, diseases, folder / "preview.png", title=f"pool of {variant}: one image per subclass"
    )


def _generate_log(run: RunHandle, result: StageResult) -> None:
    run.log_metrics(result.summary)
    for preview in sorted(result.path.glob("*/preview.png")):
        run.log_artifact(preview, f"generate/{preview.parent.name}")


PROVENANCE_FILE = "provenance.json"


def pool_folders(result: StageResult) -> dict[str, Path]:
    """generator id (``vanilla``, ``vanilla-r1``, ...) -> pool shard folder of a finished ``generate`` stage."""
    return {p.parent.name: p.parent for p in sorted(result.path.glob("*/index.json"))}


def pool_provenance(result: StageResult) -> dict[str, dict[str, str]]:
    """generator id -> {"pool": fingerprint, "finetune": fingerprint} of a finished ``generate`` stage."""
    import json

    path = result.path / PROVENANCE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    from fairskin.provenance import shard_fingerprint

    return {g: {"pool": shard_fingerprint(folder), "finetune": ""} for g, folder in pool_folders(result).items()}


def check_pool_size(config: FairSkinConfig, real_shards: Path) -> None:
    """Refuse a pool size P (``generation.images_per_subclass``) that the pipeline's search space
    (``tune.space``, counts scaled by ``tune.count_scale``) would ask more of, before generating.

    Raises :class:`ConfigError` naming the field, P and the space's own message (which names the
    parameter and its largest valid value).
    """
    from fairskin.tune.spaces import SpaceError, resolve_space
    from fairskin.tune.study import train_counts

    per_subclass = config.generation.images_per_subclass
    subclasses = [(g, d) for g in config.data.group_names for d in config.data.diseases]
    from fairskin.diffusion.variants import generators

    pools = {v: dict.fromkeys(subclasses, per_subclass) for v in generators(config.diffusion)}
    space = pipeline_space(config)
    try:
        resolve_space(space, config, pools, train_counts(real_shards))
    except SpaceError as exc:
        raise ConfigError(
            f"generation.images_per_subclass = {per_subclass} is too small for the tune stage's "
            f"space {space.name!r}: {exc}"
        ) from None


register_stage(
    Stage(
        "generate",
        reads=GENERATE_READS,
        reads_unless=(("generation.pool_seeds", [0]),),
        inputs=("finetune",),
        body=_generate_body,
        needs_ray=True,
        version=2,
        log=_generate_log,
        check=lambda config, prepare: check_pool_size(config, prepare.path / "shards"),
        check_after="prepare",
        resume_dir=lambda config, key: stages_root(config) / f"generate-{key}.work",
    )
)
