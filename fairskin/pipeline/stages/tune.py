"""The ``tune`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import EXTERNAL, Stage, StageContext, register_stage
from fairskin.pipeline.stages.generate import pool_folders
from fairskin.provenance import TAG_PIPELINE
from fairskin.tune.spaces import pipeline_space
from fairskin.tune.trial_memo import REPLAYED

# Tune fields in the stage's key only when set: unset, the key is what it was before they existed.
TUNE_READS_UNLESS = (("tune.confirm_max_points", None),)


def _tune_reads() -> tuple[str, ...]:
    """Every tune field but ``max_failures`` (retries change how a study copes, not what it finds) and those
    in ``TUNE_READS_UNLESS``."""
    from fairskin.config import TuneConfig

    skip = {"max_failures"} | {path.split(".", 1)[1] for path, _ in TUNE_READS_UNLESS}
    return tuple(f"tune.{f}" for f in TuneConfig.model_fields if f not in skip) + ("classifier", "runtime.seed")


TUNE_READS = _tune_reads()


def _tune_body(ctx: StageContext) -> Mapping[str, Any]:
    """One study of ``tune.space`` over every variant's pool (Ray Tune + Optuna, MLflow parent + children).

    The study folder lives under ``<runs root>/tune/`` and is named by the stage key, so a
    killed pipeline resumes the same study (finished trials are not rerun).
    """
    config, out, inputs, run = ctx.config, ctx.out, ctx.inputs, ctx.run
    import shutil

    from fairskin.io import atomic_write_json
    from fairskin.tune.study import STUDY_FILE, run_study, study_dir

    space = pipeline_space(config)
    name = f"{space.name}-{config.preset}-{ctx.key}"
    resume = (study_dir(config, name) / STUDY_FILE).exists()
    result = run_study(
        config,
        space,
        pool_folders(inputs["generate"]),
        inputs["prepare"].path / "shards",
        name=name,
        resume=resume,
        echo=print,
        tags={TAG_PIPELINE: run.inherit.get(TAG_PIPELINE, "")},
    )
    if result.interrupted:
        raise RuntimeError(f"study {name} was interrupted; rerun the pipeline to resume it")
    report = result.path / "report"
    if report.is_dir():
        shutil.copytree(report, out / "study_report")
    result.trials.to_csv(out / "trials.csv", index=False)
    atomic_write_json(
        out / "study.json",
        {
            "study": name,
            "path": str(result.path),
            "experiment_id": result.experiment_id,
            "parent_run_id": result.parent_run_id,
        },
    )
    run.set_tags({"fairskin.study": name, "fairskin.study_parent_run": result.parent_run_id})
    finished = result.trials[result.trials["state"] == "finished"] if "state" in result.trials else result.trials
    # Trials replayed from <runs root>/trials (fairskin.tune.trial_memo) cost next to nothing: the planner prices
    # a classifier trial from the trained ones.
    replayed = int((result.trials[REPLAYED] == 1).sum()) if REPLAYED in result.trials else 0
    return {
        "trials": len(result.trials),
        "trials_finished": len(finished),
        "trials_trained": len(result.trials) - replayed,
        "study_seconds": result.seconds,
    }


def study_of(result: StageResult) -> str:
    """The study name a finished ``tune`` stage ran."""
    import json

    return json.loads((result.path / "study.json").read_text())["study"]


def _space_fingerprint(config: FairSkinConfig, cache) -> str:
    """The resolved search space the tune stage runs (its YAML's content, not its name)."""
    import hashlib
    import json

    blob = json.dumps(pipeline_space(config).model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def study_folder(config: FairSkinConfig, key: str) -> Path:
    """The pipeline's study for tune key ``key``: ``<runs root>/tune/<space>-<preset>-<key>``."""
    from fairskin.tune.study import study_dir

    return study_dir(config, f"{pipeline_space(config).name}-{config.preset}-{key}")


EXTERNAL["tune.space_content"] = _space_fingerprint

register_stage(
    Stage(
        "tune",
        reads=TUNE_READS,
        reads_unless=TUNE_READS_UNLESS,
        inputs=("prepare", "generate"),
        body=_tune_body,
        needs_ray=True,
        external=("classifier.model", "tune.space_content"),
        log=lambda run, result: run.log_metrics(result.summary),
        resume_dir=study_folder,
    )
)
