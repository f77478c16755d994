"""A generator trial's pool: made from the live UNet, scored with the evaluate stage's figures, saved.

At every checkpoint a generator trial (:func:`fairskin.tune.generator.run_generator_trial`) generates a
small pool (:func:`generate_pool`, each image from the seed the pipeline's pool would give it) and scores it
(:func:`score_pool`: skin-tone agreement, disease fidelity with the judge and, with ``tune.generator_fid``,
FID per group in the space of :func:`pool_scorers`); the last checkpoint's pool is kept (:func:`save_pool`).
The ``inputs`` these take are the study's :class:`~fairskin.tune.generator.GeneratorInputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.config import FairSkinConfig


def generate_pool(
    parts, unet, config: FairSkinConfig, per_subclass: int, seed: int, device
) -> tuple[np.ndarray, pd.DataFrame]:
    """P images per (group, disease) from ``unet`` on ``parts``, each from the seed the pipeline's pool
    would give it (:func:`fairskin.diffusion.generate.image_seed`): uint8 (15 P, H, W, 3) and its meta."""
    import torch

    from fairskin.diffusion.generate import make_scheduler, pool_in_memory

    pipe = parts.pipeline(make_scheduler(config.generation.scheduler, parts.noise_scheduler.config))
    pipe.unet = unet
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad():
            return pool_in_memory(
                pipe,
                config.diffusion.prompt_template,
                config.data.group_names,
                config.data.diseases,
                per_subclass,
                seed,
                config.generation,
                config.data.image_size,
            )
    finally:
        unet.train(was_training)


def score_pool(pixels: np.ndarray, meta: pd.DataFrame, inputs: Any, judge, info, fid_space) -> dict[str, float]:
    """The evaluate stage's fidelity figures of one pool, as flat floats (the same functions:
    :func:`~fairskin.metrics.skin_tone.skin_tone_report`, :func:`~fairskin.metrics.generation.disease_fidelity`
    and, with FID on, :func:`~fairskin.metrics.generation.generation_report` without IS / floors / pooled)."""
    import ray

    from fairskin.metrics.generation import disease_fidelity, generation_report, judge_accuracy, judge_predictions
    from fairskin.metrics.skin_tone import image_ita, skin_tone_report

    config = inputs.config
    groups, diseases = config.data.group_names, config.data.diseases
    _, _, tone, _ = skin_tone_report(
        image_ita(pixels), meta["group"].to_numpy(), meta["disease"].to_numpy(), inputs.bands
    )
    _, fidelity = disease_fidelity(
        judge_accuracy(
            judge_predictions(judge, pixels, config.classifier.image_size, diseases), meta, groups, diseases
        ),
        inputs.judge_real,
        groups,
    )
    out = {**tone, **fidelity}
    if fid_space is not None and inputs.real is not None:
        real_pixels, real_meta = ray.get(inputs.real)
        report = generation_report(
            pixels,
            meta,
            real_pixels,
            real_meta,
            groups,
            diseases,
            fid_space,
            cache_root=config.runtime.runs_root / "cache" / "fidelity",
            isc=False,
            pooled=False,
            seed=config.runtime.seed,
        )
        out.update({k: v for k, v in report.summary.items() if k.startswith("fid_")})
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}


def pool_scorers(config: FairSkinConfig, sources: Any, device) -> tuple[Any, Any, Any]:
    """(judge, its info, FID feature space or None) that score a trial's pools, on ``device``: the judge of
    ``sources`` (:class:`~fairskin.tune.generator.GeneratorSources`) and, with ``tune.generator_fid``, the
    feature space of the evaluate stage (the independent judge's, else the reference classifier's)."""
    from fairskin.classify.judge import load_judge
    from fairskin.metrics.generation import feature_space

    judge, info = load_judge(sources.judge, sources.reference)
    judge = judge.to(device)
    fid_space = None
    if config.tune.generator_fid:
        model = judge
        if info.kind != "independent":
            from fairskin.classify.models import load_saved_classifier

            model = load_saved_classifier(Path(sources.reference) / "model").to(device).eval()
        fid_space = feature_space(
            model,
            config.classifier.image_size,
            config.generation.inception_weights_path,
            kind="judge-classifier" if info.kind == "independent" else "reference-classifier",
        )
    return judge, info, fid_space


def save_pool(out: Path, pixels: np.ndarray, meta: pd.DataFrame, config: FairSkinConfig, title: str) -> Path:
    """``pool.npz`` + ``pool_meta.csv`` and ``preview.png`` (one image per subclass, titled ``title``) in
    ``out``; returns the preview's path."""
    from fairskin.metrics.plots import save_image_grid

    np.savez_compressed(out / "pool.npz", pixels=pixels)
    meta.to_csv(out / "pool_meta.csv", index=False)
    first = meta.groupby(["group", "disease"], sort=False).head(1).index.to_numpy()
    save_image_grid(
        list(pixels[first]), config.data.group_names, config.data.diseases, out / "preview.png", title=title
    )
    return out / "preview.png"
