"""A study's progress on a quiet console: one rich bar of trials ended out of the study's total.

Ray Tune's own console output (``RunConfig(verbose=1)``) prints a configuration box, a trial table
every 30 s and a result box per trial: hundreds of lines for a study, interleaved with the engine's
own bars. The engine shows this bar instead and leaves Tune's tables to ``runtime.verbose``.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

ENDED = ("TERMINATED", "ERROR")


def tune_verbosity(progress: bool, verbose: bool) -> int:
    """Ray Tune's ``RunConfig.verbose``: its trial tables only with ``runtime.verbose`` (0 otherwise; the
    engine's :class:`StudyProgress` bar stands for them when ``runtime.progress``)."""
    return 1 if (verbose and progress) else 0


class StudyProgress(Callback):
    """A rich bar: trials ended (finished or failed, restored ones included) of ``total``, and how many run.

    Tune pickles its callbacks with the experiment state (``trials/tuner.pkl``): the live bar is
    dropped on pickling and started again by a restored study.
    """

    def __init__(self, total: int, description: str = "tune"):
        self.total = int(total)
        self.description = description
        self._progress: Any = None
        self._task: Any = None
        self.ended = 0
        self.failed = 0
        self.running = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_progress=None, _task=None)
        return state

    def _start(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self.total, state="")

    def count(self, trials) -> None:
        """Count ended, failed and running trials from Tune's trial list (statuses as Tune names them)."""
        statuses = [getattr(t, "status", None) for t in trials]
        self.ended = sum(s in ENDED for s in statuses)
        self.failed = sum(s == "ERROR" for s in statuses)
        self.running = sum(s == "RUNNING" for s in statuses)

    def on_step_end(self, iteration: int, trials, **info) -> None:
        self.count(trials)
        if self._progress is None:
            self._start()
        failed = f", {self.failed} failed" if self.failed else ""
        self._progress.update(self._task, completed=self.ended, state=f"{self.running} running{failed}")

    def on_experiment_end(self, trials, **info) -> None:
        self.count(trials)
        if self._progress is not None:
            self._progress.update(
                self._task, completed=self.ended, state=f"{self.failed} failed" if self.failed else ""
            )
            self._progress.stop()
            self._progress = None


# PhaseClock's marks: key -> {"first_step": t, "start" / "end": {trial id: t}}.
MARKS: dict[str, dict[str, Any]] = {}


def _marks(key: str) -> dict[str, Any]:
    return MARKS.setdefault(key, {"start": {}, "end": {}})


class PhaseClock(Callback):
    """Driver-side timestamps of a study (wall clock): Tune's first controller step, and when each trial
    started (its actor is up) and ended. :func:`fairskin.tune.study.run_study`
    turns them into its ``timings``. Nothing is logged.

    The marks live in the module-level :data:`MARKS` keyed by ``key``, so a copy of the callback (Tune
    pickles its callbacks with the experiment state) still writes where the study reads.
    """

    def __init__(self, key: str):
        self.key = key
        _marks(key)

    def _mark(self, kind: str, trial) -> None:
        _marks(self.key)[kind][trial.trial_id] = time.time()

    def on_step_begin(self, iteration, trials, **info):
        _marks(self.key).setdefault("first_step", time.time())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._mark("start", trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._mark("end", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._mark("end", trial)
