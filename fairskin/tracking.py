"""MLflow tracking: one experiment per study, a parent run per invocation, child runs per stage.

Runs are addressed by id through :class:`mlflow.MlflowClient`, not through the fluent
API's process-global "active run", so the same code works in the driver, in Ray
workers and in a resumed job. Children are nested with the ``mlflow.parentRunId`` tag,
which is what the MLflow UI reads.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig, flatten
from fairskin.secrets import redact, redact_tree

PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM_LEN = 6000
_PARAMS_PER_CALL = 100
_METRICS_PER_CALL = 1000


def loggable_params(config: FairSkinConfig) -> dict[str, Any]:
    """The resolved configuration as flat ``section.field`` params, credentials in URIs redacted."""
    return redact_tree(flatten(config.model_dump(mode="json")))


@dataclass
class RunHandle:
    """A live MLflow run; ``client`` is None when tracking is disabled (every call is a no-op)."""

    client: Any
    run_id: str
    experiment_id: str
    # Tags every run nested under this one carries too (provenance: the pipeline run that made it).
    inherit: dict[str, str] = field(default_factory=dict)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified, cut to MLflow's 6,000-character limit), 100 per call."""
        if self.client is None or not params:
            return
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), _PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[start : start + _PARAMS_PER_CALL])

    def log_config(self, config: FairSkinConfig) -> None:
        """Log the whole resolved configuration as flattened ``section.field`` params (credentials redacted)."""
        self.log_params(loggable_params(config))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``. A non-finite value (NaN, inf) is not logged as a number:
        the run is tagged instead (see :func:`record_nonfinite`), so a divergence is visible."""
        if self.client is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        finite, bad = split_finite(metrics)
        items = [Metric(k, v, now, int(step or 0)) for k, v in finite.items()]
        for start in range(0, len(items), _METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[start : start + _METRICS_PER_CALL])
        if bad:
            record_nonfinite(self.client, self.run_id, bad, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> RunHandle:
        """Start a run nested under this one (same experiment)."""
        if self.client is None:
            return RunHandle(None, "", "")
        all_tags = {**self.inherit, **{str(k): str(v) for k, v in (tags or {}).items()}}
        all_tags[PARENT_TAG] = self.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return RunHandle(self.client, run.info.run_id, self.experiment_id, dict(self.inherit))

    def end(self, status: str = "FINISHED") -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (a path inside the run's artifacts)."""
        if self.client is None:
            return
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file or folder into the run's artifacts."""
        if self.client is None:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


TAG_NONFINITE = "fairskin.nonfinite"


def split_finite(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(finite values, non-finite values) of the numeric entries of ``metrics`` (None is dropped)."""
    finite, bad = {}, {}
    for key, value in metrics.items():
        if value is None:
            continue
        value = float(value)
        (finite if math.isfinite(value) else bad)[str(key)] = value
    return finite, bad


def record_nonfinite(client: Any, run_id: str, values: Mapping[str, float], step: int | None = None) -> None:
    """Make non-finite metrics visible without storing them as numbers (NaN / inf would poison every
    mean and plot that reads the run): tag ``fairskin.nonfinite`` = the sorted, comma-separated names
    of every metric that was ever non-finite in the run, and ``fairskin.nonfinite.<name>`` = the first
    such value and its step (e.g. ``nan at step 3``). A warning is logged too."""
    import logging

    tags = client.get_run(run_id).data.tags
    names = set(filter(None, tags.get(TAG_NONFINITE, "").split(","))) | set(values)
    client.set_tag(run_id, TAG_NONFINITE, ",".join(sorted(names)))
    for key, value in values.items():
        if f"{TAG_NONFINITE}.{key}" not in tags:
            client.set_tag(run_id, f"{TAG_NONFINITE}.{key}", f"{value} at step {int(step or 0)}")
    logging.getLogger("fairskin").warning(
        "run %s: non-finite metric(s) %s at step %s (tagged %s)", run_id, dict(values), int(step or 0), TAG_NONFINITE
    )


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."


_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def is_database_uri(uri: str) -> bool:
    """A SQLAlchemy database URI other than SQLite (``postgresql://``, ``postgresql+psycopg://``, ``mysql://``...)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    return scheme in _DATABASE_SCHEMES


# pg_advisory_lock key ("FSKSCHEM" read as a big-endian 64-bit integer): one per database.
_SCHEMA_LOCK_KEY = int.from_bytes(b"FSKSCHEM", "big") - (1 << 63)


@contextlib.contextmanager
def schema_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise the first opening of a PostgreSQL tracking store between processes.

    MLflow creates (or migrates) its tables when a process first opens a store; two processes doing
    that at once on a fresh database race and one dies (``DuplicateTable`` / a unique violation on
    ``pg_type``: measured with two pipelines started together). A session advisory lock held on a
    connection of its own while the store is opened makes the second wait and then find the tables.
    Other stores: nothing (SQLite under a runs root is opened under the runs-root lock).
    """
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in tracking_uri else ""
    if scheme != "postgresql":
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


class Tracker:
    """Opens runs in one MLflow experiment at one tracking URI."""

    def __init__(self, tracking_uri: str, experiment: str, enabled: bool = True, runs_root: Path | None = None):
        self.tracking_uri = tracking_uri  # the real URI: only for connecting, never printed or stored
        self.display_uri = redact(tracking_uri)  # what people and files see
        self.experiment_name = experiment
        self.enabled = enabled
        self.client = None
        self.experiment_id = ""
        if enabled:
            from mlflow import MlflowClient

            artifact_location = None
            if tracking_uri.startswith("sqlite:///"):
                # Keep artifacts beside the database, not in ./mlruns of whatever folder we run from.
                db_dir = Path(tracking_uri[len("sqlite:///") :]).parent
                db_dir.mkdir(parents=True, exist_ok=True)
                artifact_location = (db_dir / "mlartifacts").as_uri()
            elif runs_root is not None and is_database_uri(tracking_uri):
                # A database server (postgresql://...) stores no files: a new experiment's artifacts go under
                # the runs root that created it, not into ./mlruns of the current folder (MLflow's default).
                artifact_location = (Path(runs_root) / "mlartifacts").as_uri()
            with schema_lock(tracking_uri):  # MLflow creates its tables on the first open (racy on a fresh db)
                self.client = MlflowClient(tracking_uri=tracking_uri)
                self.client.search_experiments(max_results=1)  # opens the store: tables created here
            self.experiment_id = self._get_or_create(experiment, artifact_location)

    def _get_or_create(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # another process created it between our two calls
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    @classmethod
    def from_config(cls, config: FairSkinConfig, experiment: str | None = None) -> Tracker:
        return cls(
            config.tracking_uri(),
            experiment or config.tracking.experiment,
            config.tracking.enabled,
            config.runtime.runs_root,
        )

    def start(
        self, name: str, parent: RunHandle | str | None = None, tags: Mapping[str, Any] | None = None
    ) -> RunHandle:
        """Create a run (nested under ``parent`` when given) and return its handle."""
        if self.client is None:
            return RunHandle(None, "", "")
        inherit = dict(parent.inherit) if isinstance(parent, RunHandle) else {}
        all_tags = {**inherit, **{str(k): str(v) for k, v in (tags or {}).items()}}
        parent_id = parent.run_id if isinstance(parent, RunHandle) else parent
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return RunHandle(self.client, run.info.run_id, self.experiment_id, inherit)

    def resume(self, run_id: str) -> RunHandle:
        """A handle to an existing run, set back to RUNNING."""
        if self.client is None:
            return RunHandle(None, "", "")
        self.client.update_run(run_id, status="RUNNING")
        return RunHandle(self.client, run_id, self.experiment_id)

    def finish(self, handle: RunHandle, status: str = "FINISHED") -> None:
        if self.client is not None and handle.run_id:
            self.client.set_terminated(handle.run_id, status=status)

    @contextlib.contextmanager
    def run(
        self, name: str, parent: RunHandle | str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[RunHandle]:
        """Context manager: FINISHED on success, KILLED on Ctrl-C, FAILED on any other error."""
        handle = self.start(name, parent, tags)
        try:
            yield handle
        except KeyboardInterrupt:
            self.finish(handle, "KILLED")
            raise
        except BaseException:
            self.finish(handle, "FAILED")
            raise
        self.finish(handle, "FINISHED")

    def runs_url(self, host: str = "http://127.0.0.1:5000") -> str:
        """Where the MLflow UI lists this experiment's training runs (nested under parents)."""
        return f"{host}/#/experiments/{self.experiment_id}/runs"

    def ui_command(self, port: int = 5000) -> str:
        """The command that serves the MLflow UI on this tracking URI (loopback only); credentials in the
        URI are shown as ``***`` (put them in ``~/.pgpass`` or the MLflow environment variables instead)."""
        return (
            f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri "
            f"{self.display_uri} --host 127.0.0.1 --port {port} --workers 1"
        )
