"""The classifier study's trial kind (``trainable: classifier``, the default): :data:`CLASSIFIER`.

One trial = one classifier training over a variant's pool (:func:`fairskin.tune.trainable.classifier_trial`).
Before Ray, the space is checked against every pool (:func:`check_study`); after the search, the chosen
points are re-trained with ``tune.confirm_seeds`` new classifier seeds (:func:`confirm_classifier`;
``report/confirmed.csv`` and ``report/confirmed.png``). Below the pipeline: the pipeline's ``tune``
stage runs this kind, so nothing here imports :mod:`fairskin.pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.tune.kinds import REPORT_DIR, StudyError, StudyResult
from fairskin.tune.spaces import ResolvedSpace, SearchSpace, resolve_space
from fairskin.tune.trainable import classifier_trial, put_inputs


def _pool_counts(pools: Mapping[str, Path]) -> dict[str, dict[tuple[str, str], int]]:
    from fairskin.classify.augment import pool_counts
    from fairskin.data.shards import read_metadata

    out = {}
    for variant, folder in pools.items():
        if not Path(folder, "index.json").exists():
            raise StudyError(f"pool of variant {variant!r}: {folder} is not a shard folder (no index.json)")
        meta = read_metadata(Path(folder))
        out[variant] = pool_counts(meta[meta["split"] == "pool"])
    return out


def train_counts(real_shards: Path) -> dict[tuple[str, str], int]:
    """Real training images per (group, disease) in a real shard folder (rows with split == train)."""
    from fairskin.classify.augment import pool_counts
    from fairskin.data.shards import read_metadata

    if not Path(real_shards, "index.json").exists():
        raise StudyError(f"real shards: {real_shards} is not a shard folder (no index.json)")
    meta = read_metadata(Path(real_shards))
    return pool_counts(meta[meta["split"] == "train"])


def check_study(
    config: FairSkinConfig,
    space: SearchSpace,
    pools: Mapping[str, Path],
    real_shards: Path,
    variant: str | None = None,
    trials: int | None = None,
) -> ResolvedSpace:
    """Resolve the space for this preset and check it against every pool: no Ray, no training."""
    return resolve_space(space, config, _pool_counts(pools), train_counts(real_shards), variant=variant, trials=trials)


def confirm_classifier(
    config: FairSkinConfig,
    space: ResolvedSpace,
    folder: Path,
    points: list[dict[str, Any]],
    inputs,
    study: StudyResult,
    parent,
    tags: Mapping[str, str],
    pool_fps: Mapping[str, str],
    echo: Callable[[str], None],
) -> pd.DataFrame:
    """Re-train the chosen points (the best trial and the Pareto points) with ``tune.confirm_seeds`` new
    classifier seeds; write ``report/confirmed.csv`` and ``report/confirmed.png`` (also parent-run artifacts)."""
    from fairskin.tune.confirm import confirm_seeds, confirmation_table, plot_confirmations, run_confirmations

    resources = {"CPU": config.tune.cpus_per_trial, "GPU": config.tune.gpus_per_trial}
    seeds = confirm_seeds(space.train_seeds, config.tune.confirm_seeds)
    records = run_confirmations(
        folder,
        points,
        seeds,
        inputs,
        resources=resources,
        parent=parent,
        tags=tags,
        pool_fingerprints=pool_fps,
        echo=echo,
    )
    table = confirmation_table(records, study.trials, space.metrics)
    report = folder / REPORT_DIR
    table.to_csv(report / "confirmed.csv", index=False)
    plot = plot_confirmations(
        table,
        space.metrics,
        report / "confirmed.png",
        f"{study.name}: chosen points re-trained with {len(seeds)} new seed(s) (95% CI over those seeds)",
    )
    for path in (report / "confirmed.csv", plot):
        parent.log_artifact(path, "study")
        study.artifacts.append(path)
    for _, row in table.iterrows():
        for metric in space.metrics:
            echo(
                f"  {row['role']} {row['trial_id']}: {metric} at search {row[f'{metric}_search']:.3f}; confirmed "
                f"over {row['seeds']} seeds {row[metric]:.3f} [{row[f'{metric}_low']:.3f}, "
                f"{row[f'{metric}_high']:.3f}]"
            )
    return table


class ClassifierKind:
    """The classifier study's :class:`~fairskin.tune.kinds.TrialKind` (use :data:`CLASSIFIER`)."""

    name = "classifier"
    trainable = staticmethod(classifier_trial)
    keep_checkpoint = False  # a trial restarts from its first epoch
    confirm_grids = False  # a grid repeats classifier seeds itself

    def resolve(self, config, spec, pools, real_shards, variant, trials):
        return check_study(config, spec, pools, real_shards, variant, trials), pools, real_shards

    def record(self) -> dict[str, Any]:
        return {}

    def put_inputs(self, config, space, pools, real_shards, folder, fingerprints):
        from fairskin.tune.trial_memo import memo_for

        resources = {"CPU": config.tune.cpus_per_trial, "GPU": config.tune.gpus_per_trial}
        memo = memo_for(config.runtime.runs_root, *fingerprints, resources)
        return put_inputs(real_shards, pools, space, config.classifier, memo=memo)

    def reports(self, config: FairSkinConfig, space: ResolvedSpace) -> int:
        return config.classifier.epochs  # one report per epoch

    def completed(self, trials: pd.DataFrame, config: FairSkinConfig) -> pd.DataFrame:
        from fairskin.tune.analysis import complete_trials

        return complete_trials(trials, config.classifier.epochs)

    def plots(self, config, name, report, space, done, front) -> list[Path]:
        return []

    def best_variant(self, folder: Path, trial_id: str) -> Path | None:
        return None

    confirm = staticmethod(confirm_classifier)


CLASSIFIER = ClassifierKind()
