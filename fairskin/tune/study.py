"""One study: a Ray Tune ``Tuner`` over a trial kind's trainable, tracked in MLflow, resumable.

The study code is shared by the two trial kinds (:class:`fairskin.tune.kinds.TrialKind`): the classifier
study (:data:`fairskin.tune.classifier.CLASSIFIER`, the default: the pipeline's ``tune`` stage runs it) and
the generator study (:class:`fairskin.tune.generator_study.GeneratorKind`, above the pipeline). This module
sits below the pipeline: it imports neither the pipeline nor the generator study. The trials table and
the report folder are :mod:`fairskin.tune.study_report`'s.

Layout of a study folder, ``<runs root>/tune/<study>/``::

    study.json           what was asked (space, preset, variant, trials) and the resolved space
    mlflow_parent.json   tracking URI, experiment and the parent run id
    mlflow_runs.json     trial id -> child run id and state (written by the MLflow callback)
    trials/              Ray Tune's experiment folder (Tuner storage_path = the study folder)
    report/              trials.csv, best_trial.json, pareto_front.csv, plots (also parent artifacts);
                         a generator study adds best_variant.yaml (the best trial's variant.yaml)
    generators/          a generator study's trials: trial_<id>/ with pipeline/, pool, preview, variant.yaml
    confirm/             confirmations (tune.confirm_seeds): results.json, one record per finished job; a
                         generator study adds confirmed.csv, confirmed_tradeoff.png and generators/<name>_salt<k>/

One MLflow experiment per study, one parent run per study (a ``--resume`` continues it),
one child run per trial. Inside trials only ``ray.tune.report`` is called; the driver's
callback writes the child runs. Search: Optuna (seeded TPE or random; multi-objective when
the space names several objectives) or a grid; ASHA over epochs when the space asks.

Reproducibility: with concurrency 1 a study is reproducible (seeded sampler, seeded
training). With several trials at once, which results TPE has seen when it proposes a
point depends on timing, so studies are reproducible in distribution only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.io import atomic_write_json
from fairskin.lock import holding_runs_root
from fairskin.tracking import RunHandle, Tracker, loggable_params
from fairskin.tune.classifier import CLASSIFIER
from fairskin.tune.classifier import check_study as check_study  # re-exported (benchmarks, tests)
from fairskin.tune.classifier import train_counts as train_counts  # re-exported (the pipeline's generate stage)
from fairskin.tune.kinds import StudyError, StudyResult, TrialKind
from fairskin.tune.mlflow_callback import (
    PARENT_FILE,
    StudyMLflowCallback,
    read_json,
    remember_tracking_uri,
)
from fairskin.tune.spaces import ResolvedSpace, SearchSpace, load_space
from fairskin.tune.study_report import summarise, trial_id_of, trials_table
from fairskin.tune.tuner import (
    build_scheduler,
    build_search,
    build_trainable,
    max_concurrency,
    timed_fit,
    without_tensorboard,
)
from fairskin.versioning import record_environment

STUDY_FILE = "study.json"
TUNE_DIR = "trials"
# The parts of a study's wall time in StudyResult.timings (seconds), in order. ``fit.*`` add up to ``fit``,
# ``report.*`` to ``report``: Ray's start-up (or join), decoding the inputs and putting them in the object
# store, building the searcher / callbacks / Tuner, Tuner.fit() until Tune's first controller step (its
# callbacks' and searcher's setup: the MLflow callback's store), then until the first trial's actor started
# (placement group, actor process, unpickling the trainable), the trials
# (first start to last end), Tuner.fit()'s tail after the last trial; the trials table, the report files and
# parent artifacts, the confirmations, and closing the parent run.
PHASES = (
    "check",
    "tracking",
    "fit.ray_init",
    "fit.decode",
    "fit.setup",
    "fit.tune_start",
    "fit.to_first_trial",
    "fit.trials",
    "fit.after_last_trial",
    "report.results",
    "report.summary",
    "report.confirm",
    "report.finish",
)


class StudyFailed(StudyError):
    """A study that ran but finished no trial (every trial failed): the message quotes the first
    trials' errors. Command lines exit with code 1 (not 2: the input may be fine)."""

    exit_code = 1


def _error_line(text: str, limit: int = 300) -> str:
    """The telling part of a trial's error: its last non-empty line (the exception), shortened."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines else "(no error recorded)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failed_study_message(name: str, trials: pd.DataFrame, folder: Path, shown: int = 3) -> str:
    errors = trials["error"].fillna("").astype(str) if "error" in trials else pd.Series([""] * len(trials))
    quoted = [
        f"  trial {row.get('trial_id', '?')}: {_error_line(err)}"
        for (_, row), err in list(zip(trials.iterrows(), errors))[:shown]
    ]
    more = f"\n  ... and {len(trials) - shown} more" if len(trials) > shown else ""
    return (
        f"study {name}: none of its {len(trials)} trial(s) finished; first errors:\n"
        + "\n".join(quoted)
        + more
        + f"\n(each trial's log is under {folder / TUNE_DIR})"
    )


def study_name(space: str, variant: str | None, preset: str) -> str:
    return f"{space}-{variant or 'all'}-{preset}"


def check_study_name(name: str) -> str:
    """``name`` if it is one safe path component (see :mod:`fairskin.names`), else :class:`StudyError`."""
    from fairskin.names import check_safe_name

    return check_safe_name(name, "study name", StudyError)


def study_dir(config: FairSkinConfig, name: str) -> Path:
    return config.runtime.runs_root / "tune" / check_study_name(name)


def experiment_name(config: FairSkinConfig, name: str) -> str:
    """One MLflow experiment per study."""
    return f"{config.tracking.experiment}-tune-{name}"


# --------------------------------------------------------------------------- the study


def _study_tags(name: str, space: ResolvedSpace, config: FairSkinConfig, variant: str | None) -> dict[str, str]:
    return {
        "fairskin.kind": "tune",
        "fairskin.study": name,
        "fairskin.space": space.name,
        "fairskin.variant": variant or (space.variants[0] if len(space.variants) == 1 else "all"),
        "fairskin.mode": str(space.fixed.get("mode", "searched")),
        "fairskin.preset": config.preset,
    }


def input_fingerprints(pools: Mapping[str, Path], real_shards: Path) -> tuple[dict[str, str], str]:
    """(pool id -> content fingerprint of the pool, fingerprint of the real shards): what a study's
    runs are tagged with, so the report can tell which pools a study drew from."""
    from fairskin.provenance import shard_fingerprint

    return {k: shard_fingerprint(Path(v)) for k, v in pools.items()}, shard_fingerprint(Path(real_shards))


def _parent_run(
    config: FairSkinConfig, name: str, folder: Path, tags: Mapping[str, str], resume: bool, params: Mapping[str, Any]
) -> tuple[Tracker, RunHandle]:
    tracker = Tracker(
        config.tracking_uri(),
        experiment_name(config, name),
        config.tracking.enabled,
        runs_root=config.runtime.runs_root,
    )
    stored = read_json(folder / PARENT_FILE, {})
    if resume and stored.get("run_id"):
        resumed = tracker.resume(stored["run_id"])
        record_environment(resumed, prefix="resumed.")  # the first record stays; the resuming code's beside it
        return tracker, resumed
    parent = tracker.start(name, tags=tags)
    record_environment(parent)  # engine version, git commit, installed packages (reproducibility)
    # Credentials redacted: nothing reads the URI back from this file (a resumed study takes it from the config).
    atomic_write_json(
        folder / PARENT_FILE,
        {
            "tracking_uri": tracker.display_uri,
            "experiment": tracker.experiment_name,
            "experiment_id": tracker.experiment_id,
            "run_id": parent.run_id,
        },
    )
    parent.log_params(params)
    return tracker, parent


@holding_runs_root
def run_study(
    config: FairSkinConfig,
    space: str | Path | SearchSpace,
    pools: Mapping[str, Path],
    real_shards: Path,
    *,
    variant: str | None = None,
    trials: int | None = None,
    resume: bool = False,
    name: str | None = None,
    echo: Callable[[str], None] = print,
    tags: Mapping[str, str] | None = None,
    kind: TrialKind | None = None,
) -> StudyResult:
    """Run (or ``resume``) one study of ``space`` with trials of ``kind`` (default: the classifier's).

    ``pools``: variant -> pool shard folder (split ``pool``); ``real_shards``: the prepare
    stage's shard folder. The space is checked against every pool before Ray starts;
    a :class:`SpaceError` names the parameter and its largest valid value. ``tags``: extra
    tags of the parent and every trial run (the pipeline's run id, when a pipeline runs it).

    Raises :class:`StudyFailed` when the study ran to its end but no trial finished (the parent run
    is marked FAILED; the report folder is still written). The runs root is locked for the call.

    ``kind``: the space's trial kind (its ``trainable``), :class:`StudyError` otherwise. A generator study
    (:class:`fairskin.tune.generator_study.GeneratorKind`, which names the shards, base, judge and reference
    it reads) takes no pools and ignores ``real_shards`` (the sources' shards are used).
    """
    kind = kind or CLASSIFIER
    started = time.time()
    timings: dict[str, float] = {}
    spec = space if isinstance(space, SearchSpace) else load_space(space)
    name = name or study_name(spec.name, variant, config.preset)
    folder = study_dir(config, name)
    trials = _trials_to_run(name, folder, spec, trials, resume)
    _check_kind(spec, kind)
    resolved, pools, real_shards = kind.resolve(
        config, spec, pools, real_shards, variant, trials or config.tune.num_trials
    )
    _write_study_record(folder, name, spec, config, variant, resolved, pools, real_shards, kind, resume)

    timings["check"] = time.time() - started
    from fairskin.provenance import TAG_REAL

    pool_fps, real_fp = input_fingerprints({v: pools[v] for v in resolved.variants}, real_shards)
    tags = {**_study_tags(name, resolved, config, variant), TAG_REAL: real_fp, **dict(tags or {})}
    base_params = loggable_params(config)  # credentials in URIs redacted
    tracker, parent = _parent_run(config, name, folder, tags, resume, {**base_params, **resolved.describe()})
    _announce(echo, name, resolved, folder, tracker)
    timings["tracking"] = time.time() - started - timings["check"]
    try:
        result, inputs = _fit(
            config,
            kind,
            resolved,
            folder,
            pools,
            real_shards,
            resume,
            tracker,
            tags,
            base_params,
            echo,
            (pool_fps, real_fp),
            timings,
        )
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    timings["fit"] = time.time() - started - timings["check"] - timings["tracking"]
    ran = _Ran(name, folder, resolved, tracker, parent, result, inputs, tags, pool_fps)
    return _report(config, kind, ran, echo, started, timings)


def _announce(echo: Callable[[str], None], name: str, resolved: ResolvedSpace, folder: Path, tracker: Tracker) -> None:
    """The study's first lines: what it searches, with which objectives, where; how to open MLflow."""
    echo(
        f"study {name}: {resolved.search} over {[d.name for d in resolved.dims]}, objectives "
        f"{list(zip(resolved.metrics, resolved.modes))}, {resolved.expected_trials} trial(s); folder {folder}"
    )
    if tracker.client is not None:
        echo(f"MLflow: {tracker.ui_command()}\n  then open {tracker.runs_url()}")


def _trials_to_run(name: str, folder: Path, spec: SearchSpace, trials: int | None, resume: bool) -> int | None:
    """The trial count asked for (a resumed study keeps its own); :class:`StudyError` when ``resume`` does not
    match what the folder holds (no study to resume, another space, another trial count; or a study there
    already when not resuming)."""
    before = read_json(folder / STUDY_FILE, None)
    if resume:
        if before is None:
            raise StudyError(f"no study {name!r} to resume at {folder}; run without --resume to start it")
        if before.get("space") != spec.name:
            raise StudyError(f"study {name!r} searched space {before.get('space')!r}, not {spec.name!r}")
        if trials is not None and spec.search != "grid" and trials != before.get("trials"):
            raise StudyError(
                f"study {name!r} was started with {before.get('trials')} trials; a resumed study "
                f"keeps its trial count (got --trials {trials})"
            )
        trials = before.get("trials") if spec.search != "grid" else None
    elif before is not None:
        raise StudyError(
            f"study {name!r} already exists at {folder}: pass --resume to continue it, or --study NAME for a new one"
        )
    return trials


def _check_kind(spec: SearchSpace, kind: TrialKind) -> None:
    """:class:`StudyError` when the space trains something other than ``kind``'s trials."""
    if spec.trainable != kind.name:
        how = (
            "fairskin.tune.generator_study.run_study with the pipeline's sources"
            if spec.trainable == "generator"
            else "fairskin.tune.study.run_study"
        )
        raise StudyError(
            f"space {spec.name!r} trains {spec.trainable}s, not {kind.name}s: run it with "
            f"python -m fairskin.tune or {how}"
        )


def _write_study_record(
    folder: Path,
    name: str,
    spec: SearchSpace,
    config: FairSkinConfig,
    variant: str | None,
    resolved: ResolvedSpace,
    pools: Mapping[str, Path],
    real_shards: Path,
    kind: TrialKind,
    resume: bool,
) -> None:
    """Make the study folder and, for a new study, write ``study.json`` (what was asked, the space)."""
    record = {
        "study": name,
        "space": spec.name,
        "preset": config.preset,
        "variant": variant,
        "trials": resolved.expected_trials,
        "pools": {k: str(v) for k, v in pools.items()},
        "real_shards": str(real_shards),
        "space_definition": spec.model_dump(mode="json"),
    }
    record.update(kind.record())
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_json(folder / STUDY_FILE, record)


@dataclass
class _Ran:
    """A study whose Tuner has returned: what its report and confirmations read."""

    name: str
    folder: Path
    space: ResolvedSpace
    tracker: Tracker
    parent: RunHandle
    results: Any  # Tune's ResultGrid
    inputs: Any  # the kind's inputs (object-store refs), reused by the confirmations
    tags: Mapping[str, str]
    pool_fps: Mapping[str, str]


def _report(
    config: FairSkinConfig,
    kind: TrialKind,
    ran: _Ran,
    echo: Callable[[str], None],
    started: float,
    timings: dict[str, float],
) -> StudyResult:
    """After the fit: the trials table, the report folder, the confirmations, the parent run's end (and the
    ``report.*`` timings). :class:`StudyFailed` when the study ended with no finished trial."""
    name, folder, resolved, parent = ran.name, ran.folder, ran.space, ran.parent
    mark = time.time()
    trials_frame = trials_table(folder, ran.results)
    timings["report.results"] = time.time() - mark
    mark = time.time()
    out = summarise(config, kind, name, folder, resolved, ran.tracker, parent, trials_frame, time.time() - started)
    timings["report.summary"] = time.time() - mark
    mark = time.time()
    finished = int((trials_frame["state"] == "finished").sum()) if not trials_frame.empty else 0
    if not out.interrupted and finished == 0:
        parent.log_metrics({"trials_finished": 0})
        parent.end("FAILED")
        raise StudyFailed(failed_study_message(name, trials_frame, folder))
    # Confirmations: a classifier study re-trains its chosen points with new classifier seeds (not a grid,
    # which repeats seeds itself); a generator study re-fine-tunes them and vanilla under new generator seeds
    # (any search: every trial of a generator study ran on one generator seed).
    if not out.interrupted and config.tune.confirm_seeds > 0 and (kind.confirm_grids or resolved.search != "grid"):
        try:
            out.confirmed = _confirm(
                config, kind, resolved, folder, ran.results, ran.inputs, out, parent, ran.tags, ran.pool_fps, echo
            )
        except KeyboardInterrupt:
            parent.end("KILLED")
            raise
    timings["report.confirm"] = time.time() - mark
    mark = time.time()
    out.timings = timings
    out.seconds = time.time() - started
    parent.log_metrics(
        {
            "study_seconds": out.seconds,
            "trials_finished": int((trials_frame["state"] == "finished").sum()) if not trials_frame.empty else 0,
        }
    )
    parent.end("KILLED" if out.interrupted else "FINISHED")
    timings["report.finish"] = time.time() - mark
    timings["report"] = time.time() - started - timings["check"] - timings["tracking"] - timings["fit"]
    return out


def _fit(
    config: FairSkinConfig,
    kind: TrialKind,
    space: ResolvedSpace,
    folder: Path,
    pools: Mapping[str, Path],
    real_shards: Path,
    resume: bool,
    tracker: Tracker,
    tags: Mapping[str, str],
    base_params: Mapping[str, Any],
    echo: Callable[[str], None],
    fingerprints: tuple[Mapping[str, str], str],
    timings: dict[str, float] | None = None,
):
    """Start (or join) Ray, put the kind's inputs in the object store and run the Tuner (a new one, or the
    restored experiment when resuming): (Tune's results, the inputs). Fills the ``fit.*`` timings."""
    from ray import tune

    from fairskin.runtime import init_ray
    from fairskin.tune.progress import tune_verbosity

    timings = {} if timings is None else timings
    mark = time.time()
    cluster = init_ray(config)
    timings["fit.ray_init"] = time.time() - mark
    mark = time.time()
    concurrency = max_concurrency(config, cluster)
    inputs = kind.put_inputs(config, space, pools, real_shards, folder, fingerprints)
    scheduler = build_scheduler(space, kind.reports(config, space))
    timings["fit.decode"] = time.time() - mark
    mark = time.time()
    trainable = build_trainable(config, inputs, kind.trainable)
    exp_dir = folder / TUNE_DIR
    # Tune pickles the callback with a redacted URI (trials/tuner.pkl); a restored one takes the real URI from here.
    remember_tracking_uri(folder, tracker.tracking_uri)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        echo(f"resuming from {exp_dir} (finished trials are kept, unfinished ones rerun)")
        # The callbacks and Tune's verbosity come back from the experiment state (the bar restarts itself).
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        timings["fit.setup"] = time.time() - mark
        return timed_fit(tuner, timings, None), inputs
    searcher, param_space = build_search(space, concurrency, verbose=bool(config.runtime.verbose))
    callbacks, clock = _callbacks(config, space, folder, tracker, tags, base_params, fingerprints[0])
    echo(
        f"{concurrency} trial(s) at once, {config.tune.cpus_per_trial} CPU each "
        f"(cluster: {cluster.get('CPU', 0):g} CPU)"
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=space.trials,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(folder),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1) if kind.keep_checkpoint else None,
            verbose=tune_verbosity(config.runtime.progress, config.runtime.verbose),
        ),
    )
    timings["fit.setup"] = time.time() - mark
    with without_tensorboard():
        return timed_fit(tuner, timings, clock.key), inputs


def _callbacks(
    config: FairSkinConfig,
    space: ResolvedSpace,
    folder: Path,
    tracker: Tracker,
    tags: Mapping[str, str],
    base_params: Mapping[str, Any],
    pool_fingerprints: Mapping[str, str],
) -> tuple[list, Any]:
    """A new Tuner's callbacks (Tune's CSV and JSON trial logs, the MLflow child runs when tracking, the
    progress line when asked, the phase clock last) and that clock."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from fairskin.tune.progress import PhaseClock, StudyProgress

    # Tune's CSV and JSON trial logs (progress.csv, result.json) by name; its TensorBoard logger is left
    # out (see without_tensorboard).
    callbacks = [CSVLoggerCallback(), JsonLoggerCallback()]
    if tracker.client is not None:
        callbacks.append(
            StudyMLflowCallback(
                folder, tracker.tracking_uri, tracker.experiment_name, tags, base_params, pool_fingerprints
            )
        )
    if config.runtime.progress:
        callbacks.append(StudyProgress(space.expected_trials, f"tune {folder.name}"))
    clock = PhaseClock(f"{folder}@{time.time()}")
    callbacks.append(clock)
    return callbacks, clock


def _confirm(
    config: FairSkinConfig,
    kind: TrialKind,
    space: ResolvedSpace,
    folder: Path,
    results,
    inputs,
    study: StudyResult,
    parent: RunHandle,
    tags: Mapping[str, str],
    pool_fps: Mapping[str, str],
    echo: Callable[[str], None],
) -> pd.DataFrame:
    """The points to confirm (the best trial, then the Pareto points, at most ``tune.confirm_max_points``
    distinct settings: :func:`fairskin.tune.confirm.chosen_points`), confirmed by ``kind`` (its table;
    an empty one when no point was chosen)."""
    from fairskin.tune.confirm import chosen_points

    configs = {trial_id_of(res)[0]: dict(res.config or {}) for res in results}
    points = chosen_points(
        study.best,
        study.pareto,
        configs,
        limit=config.tune.confirm_max_points,
        metrics=space.metrics,
        modes=space.modes,
    )
    if not points:
        return pd.DataFrame()
    return kind.confirm(config, space, folder, points, inputs, study, parent, tags, pool_fps, echo)
