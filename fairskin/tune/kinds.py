"""What differs between a classifier study and a generator study: the trial kind a study runs.

The study code (:mod:`fairskin.tune.study`: checks, MLflow parent, Tuner, trials table, report,
confirmations' choice of points) is shared; a :class:`TrialKind` brings the rest. Two kinds exist:

* :data:`fairskin.tune.classifier.CLASSIFIER` (``trainable: classifier``, the default): one classifier
  training per trial over the pools; below the pipeline (the pipeline's ``tune`` stage runs it);
* :class:`fairskin.tune.generator_study.GeneratorKind` (``trainable: generator``): one fine-tune per trial
  from the pipeline's base; above the pipeline (its inputs are the pipeline's stages).

This module also holds what both kinds and the study share (:class:`StudyError`, :class:`StudyResult`,
``REPORT_DIR``), so that neither kind imports the study module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.tune.spaces import ResolvedSpace, SearchSpace

REPORT_DIR = "report"


class StudyError(RuntimeError):
    """A study that cannot start or resume as asked (the message says what to do)."""


@dataclass
class StudyResult:
    """What a study produced. ``trials``: one row per trial (config columns, last figures, run id, state)."""

    name: str
    path: Path
    space: ResolvedSpace
    experiment_id: str
    parent_run_id: str
    trials: pd.DataFrame
    best: dict[str, Any] | None
    pareto: pd.DataFrame
    interrupted: bool
    seconds: float
    artifacts: list[Path] = field(default_factory=list)
    # Seconds per phase (wall clock): check, tracking, fit, report, and their parts (study.PHASES).
    timings: dict[str, float] = field(default_factory=dict)
    confirmed: pd.DataFrame = field(default_factory=pd.DataFrame)  # chosen points re-trained over new seeds
    # A generator study: report/best_variant.yaml, the best trial's variant as a config file for
    # ``--config`` (None for classifier studies, or when no trial completed).
    best_variant: Path | None = None


class TrialKind(Protocol):
    """What a study's trials are: everything :func:`fairskin.tune.study.run_study` does differently for them.

    ``name``: the spaces it runs (``SearchSpace.trainable``). ``trainable``: the Tune function trainable,
    ``trainable(trial config, inputs)`` (a plain module-level function: Tune pickles it and names the trial
    folders after it). ``keep_checkpoint``: Tune keeps each trial's last checkpoint (a retried or restored
    trial continues from it). ``confirm_grids``: confirmations for grid spaces too (a classifier grid repeats
    seeds itself; a generator study ran every trial on one generator seed).
    """

    name: str
    trainable: Callable[[dict[str, Any], Any], None]
    keep_checkpoint: bool
    confirm_grids: bool

    def resolve(
        self,
        config: FairSkinConfig,
        spec: SearchSpace,
        pools: Mapping[str, Path],
        real_shards: Path,
        variant: str | None,
        trials: int,
    ) -> tuple[ResolvedSpace, Mapping[str, Path], Path]:
        """The checks before Ray: (the space resolved for this preset, the pools and the real shards the
        study reads), or :class:`StudyError` / :class:`~fairskin.tune.spaces.SpaceError`."""
        ...

    def record(self) -> dict[str, Any]:
        """More entries of ``study.json`` (after the shared ones)."""
        ...

    def put_inputs(
        self,
        config: FairSkinConfig,
        space: ResolvedSpace,
        pools: Mapping[str, Path],
        real_shards: Path,
        folder: Path,
        fingerprints: tuple[Mapping[str, str], str],
    ) -> Any:
        """On the driver, once: what every trial shares (its data in the object store); the trainable's
        ``inputs``, also handed to :meth:`confirm`. ``fingerprints``: (pool id -> content fingerprint, the real
        shards' fingerprint), computed once by the study (its runs are tagged with them)."""
        ...

    def reports(self, config: FairSkinConfig, space: ResolvedSpace) -> int:
        """The most reports a trial makes (ASHA's ``max_t``)."""
        ...

    def completed(self, trials: pd.DataFrame, config: FairSkinConfig) -> pd.DataFrame:
        """The rows of the trials table that ran to their end: the best trial and the front come from these."""
        ...

    def plots(
        self,
        config: FairSkinConfig,
        name: str,
        report: Path,
        space: ResolvedSpace,
        done: pd.DataFrame,
        front: pd.DataFrame,
    ) -> list[Path]:
        """The kind's own report files in ``report/`` (written here; the study logs them to the parent run)."""
        ...

    def best_variant(self, folder: Path, trial_id: str) -> Path | None:
        """The best trial's outcome as a config file in ``report/`` (:attr:`StudyResult.best_variant`), or None."""
        ...

    def confirm(
        self,
        config: FairSkinConfig,
        space: ResolvedSpace,
        folder: Path,
        points: list[dict[str, Any]],
        inputs: Any,
        study: StudyResult,
        parent: Any,
        tags: Mapping[str, str],
        pool_fingerprints: Mapping[str, str],
        echo: Callable[[str], None],
    ) -> pd.DataFrame:
        """Re-run the chosen ``points`` (:func:`fairskin.tune.confirm.chosen_points`, at least one) under new
        seeds, write the confirmation files (also parent-run artifacts, appended to ``study.artifacts``)
        and return the confirmation table (:attr:`StudyResult.confirmed`)."""
        ...
