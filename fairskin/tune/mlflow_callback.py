"""MLflow child runs for Tune trials, nested under the study's parent run, stable across ``--resume``.

Ray's :class:`~ray.air.integrations.mlflow.MLflowLoggerCallback` opens a fresh, flat run at
every trial start. :class:`StudyMLflowCallback` extends it:

* the parent run is ours: its id is read from ``<study dir>/mlflow_parent.json``, and every
  trial run carries ``mlflow.parentRunId`` plus the study's ``fairskin.*`` tags (the trial's
  own ``fairskin.variant`` / ``fairskin.mode``);
* the trial-id -> run-id map is persisted in ``<study dir>/mlflow_runs.json`` (temp file +
  rename) when a run is created and when a trial ends; a restored trial (same trial id)
  logs into its existing run, and epochs already logged there are not logged twice;
* params and metrics go in batches (one SQLite transaction each), not one call per key: a trial result
  is ONE ``log_batch`` call (its metrics and, for a non-finite figure, the ``fairskin.nonfinite`` tags
  together; more only past MLflow's limits, see :func:`batch_chunks`), 10-13 ms on a local SQLite
  store where a result with a NaN figure took 3-4 calls and ~40 ms before.

The map also records each trial's state (``running``, ``finished``, ``failed``,
``interrupted``), which the study and the tests read.

After a SIGKILL the map can be ahead of Tune's own state: Tune snapshots its experiment (trials and
searcher) every ~10 s, the map is written at once. On ``--resume`` the first controller step
reconciles the two (:meth:`StudyMLflowCallback.on_step_begin`): a run whose trial the restored Tuner
does not know (it started, or finished, after the last snapshot; Tune runs that point again as a new
trial) is marked KILLED, tagged ``fairskin.superseded`` and deleted (MLflow's soft delete:
``mlflow gc`` purges it, ``restore_run`` brings it back), and a run left RUNNING by the dead process
is marked KILLED until its trial restarts (it then logs into the same run, epochs it holds skipped).
So a resumed study ends with exactly one child run per trial, none RUNNING.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from fairskin.io import atomic_write_json
from fairskin.secrets import redact
from fairskin.tracking import PARENT_TAG, TAG_NONFINITE

PARENT_FILE = "mlflow_parent.json"
RUNS_FILE = "mlflow_runs.json"
# Tune's bookkeeping keys that are not figures of the trial.
_SKIP_METRICS = {
    "trial_id",
    "date",
    "hostname",
    "node_ip",
    "pid",
    "timestamp",
    "done",
    "config",
    "should_checkpoint",
    "checkpoint_dir_name",
    "experiment_tag",
}
# study dir -> the real tracking URI, in this process only. Tune pickles the callback into
# trials/tuner.pkl (with the URI redacted, see __getstate__); a callback restored from there
# on --resume takes the real URI from here, i.e. from the configuration, in setup().
_TRACKING_URIS: dict[str, str] = {}


# MLflow's limits on one log_batch call (mlflow.utils.validation): per kind, and all entities together.
MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_PER_CALL = 100
MAX_TAGS_PER_CALL = 100
MAX_ENTITIES_PER_CALL = 1000


def batch_chunks(
    metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()
) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """Split metrics, params and tags into the fewest ``(metrics, params, tags)`` log_batch calls within
    MLflow's limits (1,000 metrics, 100 params, 100 tags, 1,000 entities in all per call), in order: each
    call takes up to 100 params and 100 tags and fills the rest with metrics. ``[]`` when all are empty."""
    m, p, t = list(metrics), list(params), list(tags)
    calls = []
    while m or p or t:
        pc, tc = p[:MAX_PARAMS_PER_CALL], t[:MAX_TAGS_PER_CALL]
        room = min(MAX_METRICS_PER_CALL, MAX_ENTITIES_PER_CALL - len(pc) - len(tc))
        calls.append((m[:room], pc, tc))
        m, p, t = m[room:], p[len(pc) :], t[len(tc) :]
    return calls


def nonfinite_tags(known: Mapping[str, str], bad: Mapping[str, float], step: int) -> dict[str, str]:
    """The ``fairskin.nonfinite`` tags to set for the non-finite figures ``bad`` at ``step``, given the
    run's tags ``known`` so far: as :func:`fairskin.tracking.record_nonfinite` sets them (the sorted names
    ever non-finite; per name its first value and step, e.g. ``nan at step 3``), only those that change."""
    names = set(filter(None, known.get(TAG_NONFINITE, "").split(","))) | set(bad)
    tags = {}
    if ",".join(sorted(names)) != known.get(TAG_NONFINITE):
        tags[TAG_NONFINITE] = ",".join(sorted(names))
    for key, value in bad.items():
        if f"{TAG_NONFINITE}.{key}" not in known:
            tags[f"{TAG_NONFINITE}.{key}"] = f"{value} at step {int(step)}"
    return tags


def remember_tracking_uri(study_dir: str | Path, tracking_uri: str) -> None:
    _TRACKING_URIS[str(study_dir)] = tracking_uri


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def read_run_map(study_dir: Path) -> dict[str, dict[str, Any]]:
    """trial id -> {"run_id", "trial_name", "state", "config"} as persisted so far."""
    return read_json(Path(study_dir) / RUNS_FILE, {})


def flatten_trial_config(config: Mapping[str, Any], prefix: str = "trial.") -> dict[str, str]:
    """Trial config -> flat MLflow params (nested dicts joined with '.')."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten_trial_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def trial_provenance(
    trial_config: Mapping[str, Any], pool_fingerprints: Mapping[str, str], study_tags: Mapping[str, str]
) -> dict[str, str]:
    """A trial run's variant / repeat / generator tags and the fingerprint of the pool it draws from."""
    from fairskin.provenance import TAG_POOL, TAG_VARIANT, generator_tags

    generator = str(trial_config.get("variant", study_tags.get(TAG_VARIANT, "")))
    try:
        tags = generator_tags(generator)
    except ValueError:  # not a generator id (e.g. a stand-in pool's name): keep it as the variant
        tags = {TAG_VARIANT: generator}
    if generator in pool_fingerprints:
        tags[TAG_POOL] = pool_fingerprints[generator]
    return tags


class StudyMLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow logger, nested under our parent run and persistent across restores.

    ``base_params``: flattened study config logged on every trial run (the trial's own
    settings are added as ``trial.*``). ``tags``: the study's ``fairskin.*`` tags.
    """

    def __init__(
        self,
        study_dir: str | Path,
        tracking_uri: str,
        experiment_name: str,
        tags: Mapping[str, str],
        base_params: Mapping[str, Any],
        pool_fingerprints: Mapping[str, str] | None = None,
    ):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name, tags=dict(tags))
        self.study_dir = str(study_dir)
        remember_tracking_uri(self.study_dir, tracking_uri)
        self.base_params = {str(k): redact(str(v)) for k, v in base_params.items()}
        # generator id -> content fingerprint of its pool: each trial run is tagged with the pool it drew from
        self.pool_fingerprints = dict(pool_fingerprints or {})

    # ------------------------------------------------------------------ plumbing

    def setup(self, *args, **kwargs):
        self.tracking_uri = _TRACKING_URIS.get(self.study_dir, self.tracking_uri)  # the real one (see above)
        super().setup(*args, **kwargs)  # experiment by name (created if absent), self._trial_runs = {}
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        parent = read_json(Path(self.study_dir) / PARENT_FILE, {})
        self.parent_run_id = parent.get("run_id", "")
        self._map = read_run_map(Path(self.study_dir))
        self._last_step: dict[str, int] = {}
        self._nonfinite: dict[str, dict[str, str]] = {}  # run id -> its fairskin.nonfinite* tags so far
        self._reconciled = False

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_client", None)  # rebuilt in setup()
        state["tracking_uri"] = redact(state.get("tracking_uri"))  # no credentials in trials/tuner.pkl
        return state

    def _save_map(self) -> None:
        atomic_write_json(Path(self.study_dir) / RUNS_FILE, self._map)

    def _existing_run(self, trial_id: str) -> str | None:
        run_id = self._map.get(trial_id, {}).get("run_id")
        if not run_id:
            return None
        try:
            self._client.get_run(run_id)
            return run_id
        except Exception:  # deleted from the tracking store: start a new run
            return None

    def _logged_steps(self, run_id: str) -> int:
        run = self._client.get_run(run_id)
        steps = [0]
        for key in run.data.metrics:
            steps += [m.step for m in self._client.get_metric_history(run_id, key)]
            break  # every epoch logs the same keys: one history is enough
        return max(steps)

    def _reconcile(self, trials) -> None:
        """Bring the run map and the runs in line with the trials the (restored) controller holds."""
        known = {t.trial_id: t for t in trials}
        changed = False
        for tid in [t for t in self._map if t not in known]:  # a trial Tune's last snapshot never saw
            run_id = self._map.pop(tid).get("run_id")
            changed = True
            if not run_id:
                continue
            try:
                run = self._client.get_run(run_id)
                if run.info.status == "RUNNING":
                    self._client.set_terminated(run_id, status="KILLED")
                self._client.set_tag(run_id, "fairskin.superseded", "the restored study reran this trial")
                self._client.delete_run(run_id)
            except Exception:  # already deleted from the store
                pass
        for tid, entry in self._map.items():
            trial = known[tid]
            if entry.get("state") != "running" or trial.status == trial.RUNNING:
                continue
            status, state = {trial.TERMINATED: ("FINISHED", "finished"), trial.ERROR: ("FAILED", "failed")}.get(
                trial.status, ("KILLED", "interrupted")
            )
            if entry.get("run_id"):
                self._client.set_terminated(entry["run_id"], status=status)
            entry["state"] = state
            changed = True
        if changed:
            self._save_map()

    # ------------------------------------------------------------------ Tune hooks

    def on_step_begin(self, iteration: int, trials, **info):
        """On the first step (after a restore the controller holds every restored trial): reconcile."""
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials)

    def log_trial_start(self, trial):
        if trial in self._trial_runs:
            return
        from mlflow.entities import Param

        tid = trial.trial_id
        run_id = self._existing_run(tid)
        if run_id is not None:  # a restored trial: same run, back to RUNNING
            self._client.update_run(run_id, status="RUNNING")
            self._last_step[tid] = self._logged_steps(run_id)
            run_tags = self._client.get_run(run_id).data.tags
            self._nonfinite[run_id] = {k: v for k, v in run_tags.items() if k.startswith(TAG_NONFINITE)}
        else:
            tags = {
                **self.tags,
                "trial_name": str(trial),
                "fairskin.trial_id": tid,
                "fairskin.mode": str(trial.config.get("mode", self.tags.get("fairskin.mode", ""))),
            }
            tags.update(trial_provenance(trial.config, self.pool_fingerprints, self.tags))
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
            run_id = run.info.run_id
            self._last_step[tid] = 0
        self._trial_runs[trial] = run_id
        self._map[tid] = {
            "run_id": run_id,
            "trial_name": str(trial),
            "state": "running",
            "config": json.loads(json.dumps(trial.config, default=str)),
        }
        self._save_map()
        params = {**self.base_params, **{k: redact(v) for k, v in flatten_trial_config(trial.config).items()}}
        items = [Param(k, v[:6000]) for k, v in params.items()]
        try:
            for _, chunk, _ in batch_chunks(params=items):
                self._client.log_batch(run_id, params=chunk)
        except Exception:  # a resumed run already holds these params (MLflow params are write-once)
            pass

    def log_trial_result(self, iteration: int, trial, result: dict):
        """Log a result's numeric figures (Tune's bookkeeping keys and booleans left out) at step
        ``training_iteration``, in one ``log_batch`` call with the ``fairskin.nonfinite`` tags of any NaN /
        inf figure (not logged as a number, as :func:`fairskin.tracking.record_nonfinite` does); a generator
        trial's preview and variant file are copied as artifacts."""
        from mlflow.entities import Metric, RunTag

        from fairskin.tracking import split_finite

        tid = trial.trial_id
        step = int(result.get("training_iteration") or iteration)
        if step <= self._last_step.get(tid, 0):
            return  # a restarted trial re-running an epoch its run already holds
        self._last_step[tid] = step
        now = int(time.time() * 1000)
        finite, bad = split_finite(
            {
                k: v
                for k, v in result.items()
                if k not in _SKIP_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        items = [Metric(k, v, now, step) for k, v in finite.items()]
        run_id = self._trial_runs[trial]
        tags = []
        if bad:  # a diverged trial: tagged, not silently dropped
            known = self._nonfinite.setdefault(run_id, {})
            new = nonfinite_tags(known, bad, step)
            known.update(new)
            tags = [RunTag(k, v) for k, v in new.items()]
            logging.getLogger("fairskin").warning(
                "run %s: non-finite metric(s) %s at step %s (tagged %s)", run_id, bad, step, TAG_NONFINITE
            )
        for metrics, _, chunk in batch_chunks(items, (), tags):
            self._client.log_batch(run_id, metrics=metrics, tags=chunk)
        for key, folder in (("preview", "pool"), ("variant_file", "generator")):  # generator trials' files
            if isinstance(result.get(key), str) and Path(result[key]).is_file():
                self._client.log_artifact(run_id, result[key], folder)

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        status = "FAILED" if failed else "FINISHED"
        self._client.set_terminated(run_id, status=status)
        self._map.setdefault(trial.trial_id, {})["state"] = "failed" if failed else "finished"
        self._save_map()

    def on_experiment_end(self, trials, **info):
        """Trials still running here were interrupted (SIGINT, time budget): mark their runs KILLED."""
        changed = False
        for trial in trials:
            entry = self._map.get(trial.trial_id)
            if entry and entry.get("state") == "running":
                entry["state"] = "interrupted"
                self._client.set_terminated(entry["run_id"], status="KILLED")
                changed = True
        if changed:
            self._save_map()
