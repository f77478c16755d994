"""The Ray Tune pieces of a study (:mod:`fairskin.tune.study`): trials at once, the searcher (Optuna or a
grid), the ASHA scheduler, the trainable with its inputs and resources, and ``Tuner.fit()`` timed by phase."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.tune.spaces import ResolvedSpace


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


def build_trainable(config: FairSkinConfig, inputs, trial: Callable[[dict[str, Any], Any], None]):
    """``trial`` (a kind's function trainable) with ``inputs`` bound and a trial's resources."""
    from ray import tune

    resources = {"CPU": config.tune.cpus_per_trial}
    if config.tune.gpus_per_trial:
        resources["GPU"] = config.tune.gpus_per_trial
    return tune.with_resources(tune.with_parameters(trial, inputs=inputs), resources)


def without_tensorboard():
    """Tune adds a CSV, a JSON and a TensorBoard logger unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``
    (Ray's documented switch, read when ``Tuner.fit()`` builds its callbacks). A study passes the CSV and
    JSON loggers itself and sets the switch for its fit: the TensorBoard logger imports tensorboardX, which
    imports torch into the driver (5-6 s on a busy 2-core machine, before the first trial can start), for
    event files nothing reads (a study is tracked in MLflow). The variable is put back afterwards."""
    import os
    from unittest import mock

    return mock.patch.dict(os.environ, {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"})


def timed_fit(tuner, timings: dict[str, float], key: str | None):
    """``tuner.fit()``, its wall time split by :class:`~fairskin.tune.progress.PhaseClock`'s marks: until Tune's first step, until the
    first trial started, the trials, and the tail after the last one (a restored study: all in ``fit.trials``)."""
    from fairskin.runtime import keeping_signal_handlers
    from fairskin.tune.progress import MARKS

    started = time.time()
    with keeping_signal_handlers():  # Tune's Ctrl-C handler would outlive the study
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
