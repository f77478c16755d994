"""A fine-tune's per-step metrics in its MLflow run: each step logged once, across resumes and worker failures.

Rank 0 reads the last step the run has (the ``loss`` history) and logs only later steps, a window at a time, from a
resumed checkpoint's window first.

Credentials: Ray Train records ``train_loop_config`` (its state actor keeps it as the run's
settings, shown on the dashboard's Train page and written to export events when Ray's export API
is on), so the tracking URI in it is redacted (:func:`worker_tracking`). A URI that carries
``user:password@`` travels to rank 0 as a Ray object instead (``ray.put``: held in the object
store's memory while the fit runs, owned by the driver, named by a reference in the config);
rank 0 connects with it, an http(s) URI's credentials moved into MLflow's standard variables of
that worker process so that MLflow's error messages, which quote the URL, carry none.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch


def worker_tracking(tracking: dict[str, str] | None) -> dict[str, Any] | None:
    """What ``train_loop_config`` carries of ``tracking`` ({"uri", "run_id"}): the URI redacted, and
    when it holds credentials the real one as a Ray object reference (``uri_ref``, see the module
    docstring), so nothing Ray Train records or shows holds the secret."""
    if not tracking:
        return None
    import ray

    from fairskin.secrets import has_secret, redact

    out: dict[str, Any] = {"uri": redact(tracking["uri"]), "run_id": tracking["run_id"]}
    if has_secret(tracking["uri"]):
        out["uri_ref"] = [ray.put(tracking["uri"])]  # in a list: Ray passes it on as a reference
    return out


def mlflow_logger(tracking: dict[str, Any] | None):
    """A handle on the fit's MLflow run: ``tracking`` as the driver holds it ({"uri", "run_id"}) or as
    :func:`worker_tracking` passes it to the workers."""
    if not tracking:
        return None
    from mlflow import MlflowClient

    from fairskin.tracking import RunHandle

    uri = tracking["uri"]
    if tracking.get("uri_ref"):  # on a worker: the real URI, from the object store
        import ray

        from fairskin.secrets import http_credentials

        uri, credentials = http_credentials(ray.get(tracking["uri_ref"][0]))
        os.environ.update(credentials)  # this worker process only; MLflow sends them as basic auth
    return RunHandle(MlflowClient(uri), tracking["run_id"], "")


def last_logged_step(logger) -> int:
    """The last step the run has metrics for (0 for none): ``loss`` is logged with every step."""
    if logger is None:
        return 0
    return max((m.step for m in logger.client.get_metric_history(logger.run_id, "loss")), default=0)


def log_steps(logger, window: list, after: int) -> int:
    """Log the steps of ``window`` ([(step, metrics)], in order) later than ``after``, a few whole
    steps per call (a call is one transaction); returns the last step now logged."""
    if logger is None:
        return after
    from mlflow.entities import Metric

    new = [(s, m) for s, m in window if s > after]
    per_call = max(1, 900 // max([len(m) for _, m in new] + [1]))
    for i in range(0, len(new), per_call):
        chunk = new[i : i + per_call]
        now = int(time.time() * 1000)
        logger.client.log_batch(
            logger.run_id,
            metrics=[Metric(k, float(v), now, s) for s, m in chunk for k, v in m.items() if np.isfinite(v)],
        )
    return max([after] + [s for s, _ in new])


def to_floats(window: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, float]]]:
    """A window's per-step metrics as floats (device tensors are read here, once per window)."""
    tensors = [v for _, m in window for v in m.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist() if tensors else [])
    return [
        (s, {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in m.items()}) for s, m in window
    ]
