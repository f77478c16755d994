"""The study's MLflow callback logs a trial result in one call, and Tune's driver warnings stay off a quiet
console (issue 28, 9). A local SQLite store, read back with MlflowClient; no Ray cluster."""

from __future__ import annotations

import logging
import math

import pytest

from fairskin.tune.mlflow_callback import (
    MAX_ENTITIES_PER_CALL,
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    MAX_TAGS_PER_CALL,
    StudyMLflowCallback,
    batch_chunks,
)


@pytest.fixture(scope="module")
def ray_head():
    """Overrides conftest's autouse session head: nothing here needs a Ray cluster."""
    yield None


def test_mlflows_batch_limits_are_the_ones_this_mlflow_enforces():
    from mlflow.utils import validation

    assert MAX_METRICS_PER_CALL == validation.MAX_METRICS_PER_BATCH
    assert MAX_PARAMS_PER_CALL == MAX_TAGS_PER_CALL == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert MAX_ENTITIES_PER_CALL == validation.MAX_ENTITIES_PER_BATCH


@pytest.mark.parametrize(
    "metrics, params, tags",
    [(0, 0, 0), (31, 0, 0), (1000, 0, 0), (1001, 0, 0), (2500, 0, 3), (950, 100, 0), (10, 250, 120), (0, 0, 101)],
)
def test_batches_stay_within_mlflows_limits_keep_order_and_are_the_fewest(metrics, params, tags):
    m, p, t = [f"m{i}" for i in range(metrics)], [f"p{i}" for i in range(params)], [f"t{i}" for i in range(tags)]
    calls = batch_chunks(m, p, t)
    for cm, cp, ct in calls:
        assert len(cm) <= 1000 and len(cp) <= 100 and len(ct) <= 100 and len(cm) + len(cp) + len(ct) <= 1000
    assert [x for c in calls for x in c[0]] == m
    assert [x for c in calls for x in c[1]] == p
    assert [x for c in calls for x in c[2]] == t
    # No split can do with fewer calls than each limit alone asks for.
    fewest = max(
        math.ceil(metrics / 1000),
        math.ceil(params / 100),
        math.ceil(tags / 100),
        math.ceil((metrics + params + tags) / 1000),
    )
    assert len(calls) == fewest


class FakeTrial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id
        self.config = {"variant": "vanilla", "mode": "random", "seed": 1}

    def __str__(self) -> str:
        return f"classifier_trial_{self.trial_id}"


@pytest.fixture
def callback(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = StudyMLflowCallback(tmp_path, uri, "study", {"fairskin.kind": "tune"}, {"runtime.seed": 0})
    cb.setup()
    calls = []
    original = cb._client.log_batch

    def counting(run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append((len(metrics), len(params), len(tags)))
        return original(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    cb._client.log_batch = counting
    return cb, calls


def _result(step: int, **figures):
    """A Tune result as the controller hands it over: figures plus Tune's own bookkeeping."""
    return {
        **figures,
        "training_iteration": step,
        "trial_id": "t0",
        "date": "2026-12-06_17-00-00",
        "timestamp": 1796576550,
        "hostname": "host",
        "node_ip": "127.0.0.1",
        "pid": 4242,
        "done": False,
        "should_checkpoint": True,
        "config": {"seed": 1},
        "time_this_iter_s": 1.5,
        "experiment_tag": "0_seed=1",
    }


def test_a_trial_result_is_one_log_batch_call_with_its_figures_in_mlflow(callback):
    from mlflow import MlflowClient

    cb, calls = callback
    trial = FakeTrial("t0")
    cb.log_trial_start(trial)
    run_id = cb._trial_runs[trial]
    calls.clear()
    cb.log_trial_result(1, trial, _result(1, val_accuracy=0.5, train_loss=1.25, epoch=1, flag=True, note="text"))
    cb.log_trial_result(2, trial, _result(2, val_accuracy=0.75, train_loss=0.5, epoch=2))
    cb.log_trial_result(2, trial, _result(2, val_accuracy=0.1))  # a restarted trial's repeat: skipped
    assert calls == [(5, 0, 0), (5, 0, 0)]  # one call per result; nothing for the repeat
    client = MlflowClient(cb.tracking_uri)
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in client.get_run(run_id).data.metrics
    }
    assert history == {
        "val_accuracy": [(1, 0.5), (2, 0.75)],
        "train_loss": [(1, 1.25), (2, 0.5)],
        "epoch": [(1, 1.0), (2, 2.0)],
        "training_iteration": [(1, 1.0), (2, 2.0)],
        "time_this_iter_s": [(1, 1.5), (2, 1.5)],
    }
    params = client.get_run(run_id).data.params
    assert params == {"runtime.seed": "0", "trial.variant": "vanilla", "trial.mode": "random", "trial.seed": "1"}


def test_a_non_finite_figure_is_tagged_in_the_same_call_as_record_nonfinite_tags_it(callback, caplog):
    from mlflow import MlflowClient

    from fairskin.tracking import RunHandle

    cb, calls = callback
    trial = FakeTrial("t1")
    cb.log_trial_start(trial)
    run_id = cb._trial_runs[trial]
    calls.clear()
    results = [
        _result(1, val_accuracy=0.5, val_essp=float("nan")),
        _result(2, val_accuracy=0.6, val_essp=float("nan"), val_gap=float("inf")),
        _result(3, val_accuracy=0.7, val_essp=float("nan")),
    ]
    for step, result in enumerate(results, start=1):
        cb.log_trial_result(step, trial, result)
    # One call each: the finite figures and the tags that change (none at step 3: nothing new).
    assert calls == [(3, 0, 2), (3, 0, 2), (3, 0, 0)]
    client = MlflowClient(cb.tracking_uri)
    # The reference: the same figures through RunHandle.log_metrics, which tags with record_nonfinite.
    experiment = client.get_experiment_by_name("study").experiment_id
    reference = RunHandle(client, client.create_run(experiment).info.run_id, experiment)
    for step, result in enumerate(results, start=1):
        reference.log_metrics({k: result[k] for k in result if k.startswith("val_")}, step=step)

    def nonfinite(run):
        return {k: v for k, v in client.get_run(run).data.tags.items() if k.startswith("fairskin.nonfinite")}

    assert (
        nonfinite(run_id)
        == nonfinite(reference.run_id)
        == {
            "fairskin.nonfinite": "val_essp,val_gap",
            "fairskin.nonfinite.val_essp": "nan at step 1",
            "fairskin.nonfinite.val_gap": "inf at step 2",
        }
    )
    assert [m.value for m in client.get_metric_history(run_id, "val_accuracy")] == [0.5, 0.6, 0.7]
    assert client.get_metric_history(run_id, "val_essp") == []
    assert sum("non-finite metric(s)" in r.getMessage() for r in caplog.records) == 6  # 3 each


def test_a_result_past_mlflows_limit_goes_in_the_fewest_calls(callback):
    from mlflow import MlflowClient

    cb, calls = callback
    trial = FakeTrial("t2")
    cb.log_trial_start(trial)
    calls.clear()
    figures = {f"m{i:04d}": float(i) for i in range(1500)}
    cb.log_trial_result(1, trial, _result(1, **figures))
    assert calls == [(1000, 0, 0), (502, 0, 0)]
    run = MlflowClient(cb.tracking_uri).get_run(cb._trial_runs[trial])
    assert run.data.metrics == {**figures, "training_iteration": 1.0, "time_this_iter_s": 1.5}


def test_a_restored_trial_keeps_its_runs_nonfinite_tags(callback):
    """After a restore the callback knows the run's tags from the store: a figure already tagged is not
    tagged again, a new one is added to the list."""
    from mlflow import MlflowClient

    cb, calls = callback
    trial = FakeTrial("t3")
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, _result(1, a=float("nan")))
    restored = StudyMLflowCallback(cb.study_dir, cb.tracking_uri, "study", {"fairskin.kind": "tune"}, {})
    restored.setup()
    restored.log_trial_start(trial)  # the run map holds t3: same run, back to RUNNING
    assert restored._trial_runs[trial] == cb._trial_runs[trial]
    restored.log_trial_result(2, trial, _result(2, a=float("nan"), b=float("nan")))
    tags = MlflowClient(cb.tracking_uri).get_run(cb._trial_runs[trial]).data.tags
    assert tags["fairskin.nonfinite"] == "a,b"
    assert tags["fairskin.nonfinite.a"] == "nan at step 1" and tags["fairskin.nonfinite.b"] == "nan at step 2"


# --------------------------------------------------------------------------- Tune's driver warnings


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_quiet_driver_writes_tunes_warnings_to_the_messages_log_and_errors_still_reach_the_console(
    tmp_path, monkeypatch
):
    import ray  # noqa: F401  (configures the `ray` logger's console handler, as in the driver)

    import fairskin.runtime as runtime

    log = tmp_path / runtime.RAY_MESSAGES_LOG
    monkeypatch.setattr(runtime, "ray_messages_log", lambda: str(log))
    console = _Collect()  # beside the `ray` logger's console handler: what reaches the console
    logging.getLogger("ray").addHandler(console)
    tune_logger = logging.getLogger("ray.tune")
    # An earlier test's driver may have routed them already (init_ray does): start from the console, as a
    # verbose driver has it, and leave the logger as it was found.
    was_routed = any(isinstance(h, runtime._TuneWarningsToLog) for h in tune_logger.handlers)
    runtime.tune_warnings_to_log(False)
    before = (tune_logger.propagate, list(tune_logger.handlers))
    seen = runtime.ray_messages_count()
    slow = "The `callbacks.on_trial_result` operation took 0.748 s, which may be a performance bottleneck."
    try:
        logging.getLogger("ray.tune.utils.util").warning(slow)
        assert console.messages == [slow]  # today's console
        runtime.tune_warnings_to_log(True)
        runtime.tune_warnings_to_log(True)  # idempotent: one handler
        logging.getLogger("ray.tune.utils.util").warning(slow)
        logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial t0")
        assert console.messages == [slow, "Trial task failed for trial t0"]
        lines = log.read_text().splitlines()
        assert len(lines) == 1 and lines[0].endswith(f"WARNING ray.tune.utils.util: {slow}")
        assert runtime.ray_messages_count() == seen + 1
        # runtime.verbose: back on the console.
        runtime.tune_warnings_to_log(False)
        assert (tune_logger.propagate, tune_logger.handlers) == before
        logging.getLogger("ray.tune.utils.util").warning(slow)
        assert console.messages[-1] == slow and len(log.read_text().splitlines()) == 1
    finally:
        runtime.tune_warnings_to_log(was_routed)
        logging.getLogger("ray").removeHandler(console)
