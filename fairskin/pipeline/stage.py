"""A pipeline stage as a declaration, the context its body runs in, the registry, and the stage keys.

A stage declares the config paths it reads, the stages it takes as inputs, its code version, the external
files and folders whose contents it reads, where it keeps resumable work, and a body that writes its folder.
The runner (:mod:`fairskin.pipeline.runner`) computes the key once and hands the body a :class:`StageContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult, stage_key
from fairskin.tracking import RunHandle


@dataclass(frozen=True)
class StageContext:
    """What a stage body works with: the configuration, its inputs' results, the temporary folder it writes
    (renamed to the stage folder when the body returns), its MLflow child run, its key (computed once by the
    runner), its resume folder (``Stage.resume_dir``; None when it has none) and whether it is redone over a
    finished folder (``--force``: resumable work of the finished run is discarded, not resumed)."""

    config: FairSkinConfig
    out: Path
    inputs: Mapping[str, StageResult]
    run: RunHandle
    key: str
    resume: Path | None = None
    redo: bool = False

    def progress(self, label: str, total: int = 0):
        """A :class:`~fairskin.progress.StepProgress` for a loop of this stage: its step metrics go to the stage's
        MLflow child run while it runs, and (``runtime.progress``) a plain line every 5 % or minute to a
        console that is not a terminal (a bar on one)."""
        from fairskin.progress import StepProgress

        return StepProgress(label, total, self.run.log_metrics, console=self.config.runtime.progress)


StageBody = Callable[[StageContext], Mapping[str, Any]]
StageLog = Callable[[RunHandle, StageResult], None]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``body(ctx) -> summary`` writes ``ctx.out`` (see :class:`StageContext`)."""

    name: str
    reads: tuple[str, ...]
    body: StageBody
    inputs: tuple[str, ...] = ()
    needs_ray: bool = False
    log: StageLog | None = None
    presets: tuple[str, ...] | None = None  # None: every preset
    # A cheap check of the configuration, run as soon as the stage named `check_after` has a
    # result, so a bad setting fails before the long stages in between, not when this one starts.
    check: Callable[[FairSkinConfig, StageResult], None] | None = None
    check_after: str | None = None
    # Bumped when the meaning of the stage's output changes (a new draw, a new seed rule): it is
    # part of the stage key, so a runs root never serves results of older code as current.
    version: int = 1
    # External inputs: entries of EXTERNAL (dotted config paths naming files / folders, and derived inputs
    # that stage modules register: "tune.space_content", "diffusion.methods") whose fingerprints are in the key.
    external: tuple[str, ...] = ()
    # Settings added after keys were in use: (dotted path, the value that reproduces the older behaviour).
    # Each is part of the key only when set to another value, so existing runs roots keep their keys.
    reads_unless: tuple[tuple[str, Any], ...] = ()
    # Its body mostly waits on Ray tasks: the runner starts it on a thread and goes on with the next stages
    # that do not take it as input, so their work shares the cluster with its own (:func:`run_in_order`).
    background: bool = False
    # Where the stage keeps work that outlives a killed attempt (checkpoints, finished items, a study), as a
    # function of (config, key); outside the temporary folder, so a rerun resumes from it. None: nothing.
    # The runner hands it to the body (ctx.resume) and `python -m fairskin runs` reads it to tell what is in use.
    resume_dir: Callable[[FairSkinConfig, str], Path] | None = None
    # Tags every later run of this invocation carries once the stage is done (provenance), e.g. the
    # fingerprint of the prepared data: result -> {tag: value}.
    provenance: Callable[[StageResult], Mapping[str, str]] | None = None

    def reads_for(self, config: FairSkinConfig) -> tuple[str, ...]:
        """The config paths in this stage's key for ``config``: ``reads``, plus each ``reads_unless`` path
        whose value is not its older-behaviour value."""
        return self.reads + tuple(p for p, old in self.reads_unless if config.section(p) != old)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (its module is imported by :mod:`fairskin.pipeline.stages`)."""
    STAGES[stage.name] = stage
    return stage


# --------------------------------------------------------------------------- keys from contents


def _path_fingerprint(dotted: str, **options) -> Callable[[FairSkinConfig, Any], str | None]:
    def fingerprint(config: FairSkinConfig, cache) -> str | None:
        from fairskin.fingerprints import content_fingerprint, local_path

        path = local_path(config.section(dotted))  # None: unset, "tiny", or a hub id (its name is the key)
        return None if path is None else content_fingerprint(path, cache, **options)

    return fingerprint


def _model_fingerprint(dotted: str):
    from fairskin.fingerprints import MODEL_SUFFIXES

    return _path_fingerprint(dotted, suffixes=MODEL_SUFFIXES)


# What an external input's fingerprint covers: a file's bytes; the image folder's files (names,
# sizes, bytes; the images sit directly under it); a model folder's weight and config files.
EXTERNAL: dict[str, Callable[[FairSkinConfig, Any], str | None]] = {
    "data.csv_path": _path_fingerprint("data.csv_path"),
    "data.image_root": _path_fingerprint("data.image_root", recursive=False),
    "diffusion.model": _model_fingerprint("diffusion.model"),
    "classifier.model": _model_fingerprint("classifier.model"),
    "generation.inception_weights_path": _path_fingerprint("generation.inception_weights_path"),
}


def external_fingerprints(stage: Stage, config: FairSkinConfig, cache=None) -> dict[str, str]:
    """Content fingerprints of the external inputs ``stage`` reads (cached under the runs root)."""
    from fairskin.fingerprints import FingerprintCache

    cache = cache if cache is not None else FingerprintCache.for_runs_root(config.runtime.runs_root)
    out = {}
    for dotted in stage.external:
        value = EXTERNAL[dotted](config, cache)
        if value is not None:
            out[dotted] = value
    cache.save()
    return out


def pipeline_stage_key(name: str, config: FairSkinConfig, inputs: Mapping[str, StageResult], cache=None) -> str:
    """The key of stage ``name`` in this pipeline: its config slice, code version, inputs' keys and
    the contents of its external inputs."""
    stage = STAGES[name]
    return stage_key(
        name, config, stage.reads_for(config), inputs, stage.version, external_fingerprints(stage, config, cache)
    )
