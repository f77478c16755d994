"""One study: a Ray Tune ``Tuner`` over the classifier trainable, tracked in MLflow, resumable.

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

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.io import atomic_write_json
from fairskin.lock import holding_runs_root
from fairskin.tracking import RunHandle, Tracker, loggable_params
from fairskin.tune.mlflow_callback import (
    PARENT_FILE,
    StudyMLflowCallback,
    read_json,
    read_run_map,
    remember_tracking_uri,
)
from fairskin.tune.spaces import ResolvedSpace, SearchSpace, load_space, resolve_space
from fairskin.versioning import record_environment

STUDY_FILE = "study.json"
TUNE_DIR = "trials"
REPORT_DIR = "report"
BEST_VARIANT_FILE = "best_variant.yaml"  # report/: the best generator trial's diffusion.custom_variants entry
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


class StudyError(RuntimeError):
    """A study that cannot start or resume as asked (the message says what to do)."""


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
    # Seconds per phase (wall clock): check, tracking, fit, report, and their parts (PHASES).
    timings: dict[str, float] = field(default_factory=dict)
    confirmed: pd.DataFrame = field(default_factory=pd.DataFrame)  # chosen points re-trained over new seeds
    # A generator study: report/best_variant.yaml, the best trial's variant as a config file for
    # ``--config`` (None for classifier studies, or when no trial completed).
    best_variant: Path | None = None


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


# --------------------------------------------------------------------------- checks before Ray


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


# --------------------------------------------------------------------------- Tune pieces


def max_concurrency(config: FairSkinConfig, cluster: Mapping[str, float]) -> int:
    """Trials at once: ``tune.max_concurrent_trials``, else the cluster's CPUs over the threads a trial
    runs (ceil of its CPUs: a 0.5-CPU trial still runs one torch thread), and its GPUs."""
    if config.tune.max_concurrent_trials:
        return config.tune.max_concurrent_trials
    cpus = float(cluster.get("CPU", 1.0))
    limit = max(1, int(cpus // max(1.0, math.ceil(config.tune.cpus_per_trial))))
    if config.tune.gpus_per_trial > 0:
        limit = min(limit, max(1, int(float(cluster.get("GPU", 0.0)) // config.tune.gpus_per_trial)))
    return limit


def build_search(space: ResolvedSpace, concurrency: int, verbose: bool = False):
    """(search_alg or None, param_space): Optuna for tpe/random, Tune's grid for grid spaces. Optuna's
    INFO lines (study created, each trial's values) only with ``verbose``."""
    from ray import tune

    fixed = dict(space.fixed)
    if space.search == "grid":
        grid = {d.name: tune.grid_search(list(d.values)) for d in space.dims}
        if "seed" not in fixed:
            grid["seed"] = tune.grid_search(list(space.train_seeds))
        return None, {**fixed, **grid}
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from fairskin.tune.spaces import DefineByRun

    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if space.search == "random":
        sampler = optuna.samplers.RandomSampler(seed=space.search_seed)
    else:
        kwargs = {"n_startup_trials": space.startup_trials} if space.startup_trials else {}
        sampler = optuna.samplers.TPESampler(
            seed=space.search_seed, multivariate=True, constant_liar=concurrency > 1, **kwargs
        )
    metric = list(space.metrics) if space.multi_objective else space.metrics[0]
    mode = list(space.modes) if space.multi_objective else space.modes[0]
    searcher = OptunaSearch(space=DefineByRun(space), metric=metric, mode=mode, sampler=sampler)
    return searcher, fixed


def build_scheduler(space: ResolvedSpace, epochs: int):
    if space.scheduler.kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=space.metrics[0],
        mode=space.modes[0],
        max_t=epochs,
        grace_period=min(space.scheduler.grace_period, epochs),
        reduction_factor=space.scheduler.reduction_factor,
    )


def build_trainable(config: FairSkinConfig, inputs, generator: bool = False):
    from ray import tune

    if generator:
        from fairskin.tune.generator import generator_trial as trial
    else:
        from fairskin.tune.trainable import classifier_trial as trial

    resources = {"CPU": config.tune.cpus_per_trial}
    if config.tune.gpus_per_trial:
        resources["GPU"] = config.tune.gpus_per_trial
    return tune.with_resources(tune.with_parameters(trial, inputs=inputs), resources)


def generator_reports(config: FairSkinConfig, space: ResolvedSpace) -> int:
    """The most reports (checkpoints) a generator trial of ``space`` can make: ASHA's max_t."""
    from fairskin.tune.generator import checkpoint_steps

    steps = config.diffusion.max_steps
    dim = space.dim("diffusion.max_steps") or space.dim("variant.max_steps")
    if dim is not None:
        steps = int(max(dim.values) if dim.kind == "choice" else dim.high)
    steps = int(space.fixed_generator.get("max_steps", steps))
    return len(checkpoint_steps(steps, config.diffusion.checkpoint_every))


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
    sources=None,
) -> StudyResult:
    """Run (or ``resume``) one study of ``space`` over the classifier.

    ``pools``: variant -> pool shard folder (split ``pool``); ``real_shards``: the prepare
    stage's shard folder. The space is checked against every pool before Ray starts;
    a :class:`SpaceError` names the parameter and its largest valid value. ``tags``: extra
    tags of the parent and every trial run (the pipeline's run id, when a pipeline runs it).

    Raises :class:`StudyFailed` when the study ran to its end but no trial finished (the parent run
    is marked FAILED; the report folder is still written). The runs root is locked for the call.

    A generator study (``trainable: generator``) takes no pools: ``sources`` (a
    :class:`fairskin.tune.generator.GeneratorSources`) names the shards, base, judge and reference it
    reads, and ``real_shards`` is ignored (the sources' shards are used).
    """
    started = time.time()
    timings: dict[str, float] = {}
    spec = space if isinstance(space, SearchSpace) else load_space(space)
    name = name or study_name(spec.name, variant, config.preset)
    folder = study_dir(config, name)
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
    generator = spec.trainable == "generator"
    if generator:
        from fairskin.tune.spaces import resolve_generator_space

        if sources is None:
            raise StudyError(
                f"space {spec.name!r} trains generators: pass the pipeline's sources "
                "(fairskin.tune.generator.generator_sources)"
            )
        resolved = resolve_generator_space(spec, config, trials=trials or config.tune.num_trials)
        pools, real_shards = {}, Path(sources.shards)
    else:
        resolved = check_study(config, spec, pools, real_shards, variant, trials or config.tune.num_trials)
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
    if generator:
        record["sources"] = {k: str(v) for k, v in vars(sources).items()}
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_json(folder / STUDY_FILE, record)

    timings["check"] = time.time() - started
    from fairskin.provenance import TAG_REAL

    pool_fps, real_fp = input_fingerprints({v: pools[v] for v in resolved.variants}, real_shards)
    tags = {**_study_tags(name, resolved, config, variant), TAG_REAL: real_fp, **dict(tags or {})}
    base_params = loggable_params(config)  # credentials in URIs redacted
    tracker, parent = _parent_run(config, name, folder, tags, resume, {**base_params, **resolved.describe()})
    echo(
        f"study {name}: {resolved.search} over {[d.name for d in resolved.dims]}, objectives "
        f"{list(zip(resolved.metrics, resolved.modes))}, {resolved.expected_trials} trial(s); folder {folder}"
    )
    if tracker.client is not None:
        echo(f"MLflow: {tracker.ui_command()}\n  then open {tracker.runs_url()}")
    timings["tracking"] = time.time() - started - timings["check"]
    try:
        result, inputs = _fit(
            config,
            resolved,
            folder,
            pools,
            real_shards,
            resume,
            tracker,
            tags,
            base_params,
            echo,
            pool_fps,
            sources,
            timings,
        )
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    timings["fit"] = time.time() - started - timings["check"] - timings["tracking"]
    mark = time.time()
    trials_table = _trials_table(folder, result)
    timings["report.results"] = time.time() - mark
    mark = time.time()
    out = _summarise(config, name, folder, resolved, tracker, parent, trials_table, time.time() - started)
    timings["report.summary"] = time.time() - mark
    mark = time.time()
    finished = int((trials_table["state"] == "finished").sum()) if not trials_table.empty else 0
    if not out.interrupted and finished == 0:
        parent.log_metrics({"trials_finished": 0})
        parent.end("FAILED")
        raise StudyFailed(failed_study_message(name, trials_table, folder))
    # Confirmations: a classifier study re-trains its chosen points with new classifier seeds (not a grid,
    # which repeats seeds itself); a generator study re-fine-tunes them and vanilla under new generator seeds
    # (any search: every trial of a generator study ran on one generator seed).
    if not out.interrupted and config.tune.confirm_seeds > 0 and (generator or resolved.search != "grid"):
        try:
            confirm = _confirm_generators if generator else _confirm
            out.confirmed = confirm(config, resolved, folder, result, inputs, out, parent, tags, pool_fps, echo)
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
            "trials_finished": int((trials_table["state"] == "finished").sum()) if not trials_table.empty else 0,
        }
    )
    parent.end("KILLED" if out.interrupted else "FINISHED")
    timings["report.finish"] = time.time() - mark
    timings["report"] = time.time() - started - timings["check"] - timings["tracking"] - timings["fit"]
    return out


def _fit(
    config: FairSkinConfig,
    space: ResolvedSpace,
    folder: Path,
    pools: Mapping[str, Path],
    real_shards: Path,
    resume: bool,
    tracker: Tracker,
    tags: Mapping[str, str],
    base_params: Mapping[str, Any],
    echo: Callable[[str], None],
    pool_fingerprints: Mapping[str, str],
    sources=None,
    timings: dict[str, float] | None = None,
):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from fairskin.runtime import init_ray
    from fairskin.tune.progress import PhaseClock, StudyProgress, tune_verbosity
    from fairskin.tune.trainable import put_inputs

    timings = {} if timings is None else timings
    mark = time.time()
    cluster = init_ray(config)
    timings["fit.ray_init"] = time.time() - mark
    mark = time.time()
    concurrency = max_concurrency(config, cluster)
    generator = space.trainable == "generator"
    if generator:
        from fairskin.tune.generator import put_generator_inputs

        inputs = put_generator_inputs(config, space, sources, folder)
        scheduler = build_scheduler(space, generator_reports(config, space))
    else:
        inputs = put_inputs(real_shards, pools, space, config.classifier)
        scheduler = build_scheduler(space, config.classifier.epochs)
    timings["fit.decode"] = time.time() - mark
    mark = time.time()
    trainable = build_trainable(config, inputs, generator)
    exp_dir = folder / TUNE_DIR
    # Tune pickles the callback with a redacted URI (trials/tuner.pkl); a restored one takes the real URI from here.
    remember_tracking_uri(folder, tracker.tracking_uri)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        echo(f"resuming from {exp_dir} (finished trials are kept, unfinished ones rerun)")
        # The callbacks and Tune's verbosity come back from the experiment state (the bar restarts itself).
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        timings["fit.setup"] = time.time() - mark
        return _timed_fit(tuner, timings, None), inputs
    searcher, param_space = build_search(space, concurrency, verbose=bool(config.runtime.verbose))
    # Tune's CSV and JSON trial logs (progress.csv, result.json) by name; its TensorBoard logger is left
    # out (see _without_tensorboard).
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
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1) if generator else None,
            verbose=tune_verbosity(config.runtime.progress, config.runtime.verbose),
        ),
    )
    timings["fit.setup"] = time.time() - mark
    with _without_tensorboard():
        return _timed_fit(tuner, timings, clock.key), inputs


def _without_tensorboard():
    """Tune adds a CSV, a JSON and a TensorBoard logger unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``
    (Ray's documented switch, read when ``Tuner.fit()`` builds its callbacks). A study passes the CSV and
    JSON loggers itself and sets the switch for its fit: the TensorBoard logger imports tensorboardX, which
    imports torch into the driver (5-6 s on a busy 2-core machine, before the first trial can start), for
    event files nothing reads (a study is tracked in MLflow). The variable is put back afterwards."""
    import os
    from unittest import mock

    return mock.patch.dict(os.environ, {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"})


def _timed_fit(tuner, timings: dict[str, float], key: str | None):
    """``tuner.fit()``, its wall time split by :class:`PhaseClock`'s marks: until Tune's first step, until the
    first trial started, the trials, and the tail after the last one (a restored study: all in ``fit.trials``)."""
    from fairskin.tune.progress import MARKS

    started = time.time()
    result = tuner.fit()
    ended = time.time()
    marks = MARKS.pop(key, {}) if key else {}
    starts, ends = list(marks.get("start", {}).values()), list(marks.get("end", {}).values())
    if starts and ends:
        first_step = min(marks.get("first_step", min(starts)), min(starts))
        timings["fit.tune_start"] = first_step - started
        timings["fit.to_first_trial"] = min(starts) - first_step
        timings["fit.trials"] = max(ends) - min(starts)
        timings["fit.after_last_trial"] = ended - max(ends)
    else:
        timings.update(
            {
                "fit.tune_start": 0.0,
                "fit.to_first_trial": 0.0,
                "fit.trials": ended - started,
                "fit.after_last_trial": 0.0,
            }
        )
    return result


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _trial_id(res) -> tuple[str, re.Match | None]:
    """(trial id, match of the folder name) of one Tune result."""
    # Trial folders are named <trainable>_<trial id>_<number>_<tag>: the number is the start order.
    found = re.search(r"_([0-9a-f]{8})_(\d+)_", Path(str(res.path)).name)
    return (res.metrics or {}).get("trial_id") or (found.group(1) if found else Path(str(res.path)).name), found


def _trials_table(folder: Path, results) -> pd.DataFrame:
    """One row per trial: trial id, run id, state, flattened config, last reported figures."""
    runs = read_run_map(folder)
    rows = []
    for res in results:
        metrics = dict(res.metrics or {})
        tid, found = _trial_id(res)
        entry = runs.get(tid, {})
        row = {
            "trial": int(found.group(2)) if found else len(rows) + 1,
            "trial_id": tid,
            "run_id": entry.get("run_id", ""),
            "state": entry.get("state", "error" if res.error else ("finished" if metrics else "pending")),
            "error": str(res.error) if res.error else "",
        }
        row.update(_flat(res.config or {}))
        row.update(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "config"
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("trial").reset_index(drop=True)
    return table


def _confirm(
    config: FairSkinConfig,
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
    """Re-train the best trial and the Pareto points with ``tune.confirm_seeds`` new classifier seeds;
    write ``report/confirmed.csv`` and ``report/confirmed.png`` (also parent-run artifacts)."""
    from fairskin.tune.confirm import (
        chosen_points,
        confirm_seeds,
        confirmation_table,
        plot_confirmations,
        run_confirmations,
    )

    configs = {_trial_id(res)[0]: dict(res.config or {}) for res in results}
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


def _confirm_generators(
    config: FairSkinConfig,
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
    """Re-fine-tune the best trial, the Pareto points and vanilla under ``tune.confirm_seeds`` new generator
    seeds (salts, :func:`fairskin.tune.confirm.confirm_salts`), score each on a pool of
    ``tune.confirm_pool_per_subclass`` images per subclass; write ``confirm/confirmed.csv`` and
    ``confirm/confirmed_tradeoff.png`` (also parent-run artifacts under ``confirm/``) and return the table
    (:func:`fairskin.tune.confirm.generator_confirmation_table`)."""
    from fairskin.config import VariantSpec
    from fairskin.diffusion.variants import salted_seed
    from fairskin.io import atomic_write_text
    from fairskin.tune.confirm import (
        CONFIRM_DIR,
        CONFIRMED_CSV,
        CONFIRMED_PLOT,
        RESULTS_FILE,
        chosen_points,
        confirm_salts,
        generator_confirmation_table,
        generator_points,
        plot_generator_confirmations,
        run_confirmations,
    )
    from fairskin.tune.generator import _settings_line, confirm_generator

    configs = {_trial_id(res)[0]: dict(res.config or {}) for res in results}
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
    tune_config, d = config.tune, config.diffusion
    per_subclass = tune_config.confirm_pool_per_subclass or tune_config.generator_pool_per_subclass
    out_dir = folder / CONFIRM_DIR
    earlier = read_json(out_dir / RESULTS_FILE, [])
    other = sorted({r.get("params", {}).get("pool_per_subclass") for r in earlier} - {per_subclass})
    if other:
        raise StudyError(
            f"tune.confirm_pool_per_subclass: this run scores confirmation pools of {per_subclass} "
            f"images per subclass, but {out_dir / RESULTS_FILE} holds confirmations at {other}; "
            f"set tune.confirm_pool_per_subclass={other[0]}, or move that file away to redo them"
        )
    vanilla = d.variant("vanilla").model_dump(mode="json", exclude_none=True)
    jobs = generator_points(points, space.fixed_generator, vanilla, int(space.fixed.get("seed", 0)))
    salts = confirm_salts(d.repeat_seeds, tune_config.confirm_seeds)
    seed_of = {s: salted_seed(d.repeat_seeds[0], s) for s in salts}
    resources = {"CPU": tune_config.cpus_per_trial, "GPU": tune_config.gpus_per_trial}
    records = run_confirmations(
        folder,
        jobs,
        salts,
        inputs,
        resources=resources,
        parent=parent,
        tags=tags,
        pool_fingerprints=pool_fps,
        echo=echo,
        train=confirm_generator,
        seed_key="seed_salt",
        unit="generator seed",
        extra_params=lambda job, salt: {
            "generator_seed": seed_of[salt],
            "search_seed": d.repeat_seeds[0],
            "pool_per_subclass": per_subclass,
        },
    )
    wanted = {j["trial_id"] for j in jobs}
    records = [r for r in records if r["trial_id"] in wanted and r["seed"] in seed_of]  # this run's points, salts
    settings = {j["trial_id"]: _settings_line(VariantSpec.model_validate(j["config"]["generator"])) for j in jobs}
    table = generator_confirmation_table(records, study.trials, space.metrics, space.modes, settings, seed_of)
    atomic_write_text(out_dir / CONFIRMED_CSV, table.to_csv(index=False))
    plot = plot_generator_confirmations(
        table,
        out_dir / CONFIRMED_PLOT,
        f"{study.name}: chosen generators and vanilla re-fine-tuned under "
        f"{len(salts)} new generator seed(s), pools of {per_subclass} per subclass (95% CI over those seeds)",
    )
    for path in (out_dir / CONFIRMED_CSV, plot):
        parent.log_artifact(path, "confirm")
        study.artifacts.append(path)
    echo(f"confirmations: {out_dir / CONFIRMED_CSV}, {plot}")  # the CLI summary prints confirmed_lines(table)
    return table


def confirmed_lines(table: pd.DataFrame) -> list[str]:
    """One line per confirmed point of a generator study's confirmation table: each objective's
    confirmed mean [95% CI] (search-time value), and its paired difference from vanilla [95% CI]."""
    lines = []
    for point, part in table.groupby("point", sort=False):
        first = part.iloc[0]
        bits = []
        for _, row in part.iterrows():
            text = f"{row['metric']} {row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
            if pd.notna(row["search"]):
                text += f" (search {row['search']:.3f})"
            if pd.notna(row["diff_vs_vanilla"]):
                text += (
                    f", vs vanilla {row['diff_vs_vanilla']:+.3f} [{row['diff_low']:+.3f}, "
                    f"{row['diff_high']:+.3f}] {row['vs_vanilla']}"
                )
                if pd.notna(row["p_holm"]):
                    text += f" (p {row['p']:.3g}, Holm over the points {row['p_holm']:.3g})"
            bits.append(text)
        lines.append(
            f"confirmed {point} ({first['role']}; {first['settings']}; n={int(part['n'].max())} "
            f"generator seeds {first['generator_seeds']}): " + "; ".join(bits)
        )
    return lines


def _summarise(
    config: FairSkinConfig,
    name: str,
    folder: Path,
    space: ResolvedSpace,
    tracker: Tracker,
    parent: RunHandle,
    trials: pd.DataFrame,
    seconds: float,
) -> StudyResult:
    from fairskin.tune.analysis import best_trial, complete_trials, pareto_front, plot_objectives_by_trial, plot_ternary

    report = folder / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    metrics, modes = list(space.metrics), list(space.modes)
    if space.trainable == "generator":
        done = trials[trials["complete"].fillna(0) >= 1] if "complete" in trials else trials.iloc[0:0]
    else:
        done = complete_trials(trials, config.classifier.epochs)
    if not all(m in done for m in metrics):  # no trial reported its objectives (e.g. every trial failed)
        done = done.iloc[0:0].reindex(columns=[*done.columns, *(m for m in metrics if m not in done)])
    best = best_trial(done, metrics, modes)
    front = pareto_front(done, metrics, modes)
    interrupted = trials.empty or bool((~trials["state"].isin(["finished", "failed"])).any())
    if len(trials) < space.expected_trials:
        interrupted = True
    paths = []
    trials.to_csv(report / "trials.csv", index=False)
    paths.append(report / "trials.csv")
    front.to_csv(report / "pareto_front.csv", index=False)
    paths.append(report / "pareto_front.csv")
    best_dict = None if best is None else json.loads(best.to_json())
    atomic_write_json(
        report / "best_trial.json",
        {
            "objectives": dict(zip(metrics, modes)),
            "best": best_dict,
            "pareto_front": json.loads(front.to_json(orient="records")),
        },
    )
    paths.append(report / "best_trial.json")
    atomic_write_json(report / "space.json", {"resolved": space.describe()})
    paths.append(report / "space.json")
    if not trials.empty and all(m in trials for m in metrics):
        paths.append(
            plot_objectives_by_trial(
                trials, metrics, modes, report / "objective_by_trial.png", title=f"{name}: objectives by trial"
            )
        )
    simplex = space.dim("proportions")
    if simplex is not None and len(simplex.groups) == 3 and not done.empty:
        key = "val_essp_fairseg" if "val_essp_fairseg" in done else metrics[0]
        paths.append(
            plot_ternary(
                done, simplex.groups, key, report / "proportions_ternary.png", title=f"{name}: proportions vs {key}"
            )
        )
    if space.trainable == "generator" and not done.empty:
        from fairskin.tune.analysis import plot_generator_tradeoff, plot_pareto

        paths.append(
            plot_generator_tradeoff(
                done,
                config.data.group_names,
                report / "tradeoff_by_tau.png",
                title=f"{name}: per-group fidelity against CBDM tau",
            )
        )
        if len(metrics) >= 2:
            paths.append(
                plot_pareto(done, front, metrics, modes, report / "pareto_front.png", title=f"{name}: Pareto front")
            )
    best_variant = None
    if space.trainable == "generator" and best is not None:
        best_variant = copy_best_variant(folder, str(best["trial_id"]))
        if best_variant is not None:
            paths.append(best_variant)
    for p in paths:
        parent.log_artifact(p, "study")
    if best is not None:
        parent.log_metrics({f"best_{m}": float(best[m]) for m in metrics})
        parent.set_tags({"fairskin.best_trial": best["trial_id"], "fairskin.best_run": best.get("run_id", "")})
    parent.log_metrics({"pareto_size": len(front)})
    return StudyResult(
        name=name,
        path=folder,
        space=space,
        experiment_id=tracker.experiment_id,
        parent_run_id=parent.run_id,
        trials=trials,
        best=best_dict,
        pareto=front,
        interrupted=interrupted,
        seconds=seconds,
        artifacts=paths,
        best_variant=best_variant,
    )


def copy_best_variant(folder: Path, trial_id: str) -> Path | None:
    """Copy the best generator trial's ``variant.yaml`` to ``report/best_variant.yaml`` and return it
    (None when that trial wrote none). The file is a config file: ``--config report/best_variant.yaml
    "diffusion.variants=[vanilla, ..., trial_<id>]"`` takes the generator into the pipeline's ablation."""
    import shutil

    from fairskin.tune.generator import GENERATORS_DIR, trial_variant_name

    source = folder / GENERATORS_DIR / trial_variant_name(trial_id) / "variant.yaml"
    if not source.is_file():
        return None
    target = folder / REPORT_DIR / BEST_VARIANT_FILE
    shutil.copyfile(source, target)
    return target
