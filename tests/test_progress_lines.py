"""Progress of long loops on a console that is a file, and their figures in MLflow while they run (issue 28, 8).

Exact with a fake clock and a StringIO console; no sleeping. The training loops are checked to give the same
numbers with a reporter as without one, and the reporter's figures against the losses the loops return.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import torch

from fairskin.progress import StepProgress, format_duration


@pytest.fixture(scope="module")
def ray_head():
    """Overrides conftest's autouse session head: nothing here uses Ray."""
    yield None


class Clock:
    """A fake monotonic clock: ``advance(seconds)``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A stand-in for ``RunHandle.log_metrics``: every call as (step, metrics)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append((step, dict(metrics)))


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _run(total, seconds_per_step, values=None, **kwargs):
    clock, stream = Clock(), io.StringIO()
    progress = StepProgress("vae", total, stream=stream, clock=clock, **kwargs)
    for step in range(1, total + 1):
        clock.advance(seconds_per_step)
        progress.update(step, vae_loss=float(step) if values is None else values[step - 1])
    progress.close()
    return progress, _lines(stream)


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (0, 42.9, 60, 307, 3723, float("nan"), -1)] == [
        "0s",
        "42s",
        "1m00s",
        "5m07s",
        "1h02m03s",
        "?",
        "?",
    ]


def test_a_plain_line_every_5_percent_with_the_mean_loss_since_the_last_line_and_the_eta():
    progress, lines = _run(100, 1.0)
    assert len(lines) == 20 and progress.lines == 20
    # 1 s a step: at step 5, 5 s elapsed and 95 steps left; the loss is the mean of steps 1..5 (= 3).
    assert lines[0] == "[vae] step 5/100 (5 %) vae_loss=3 elapsed 5s eta 1m35s"
    assert lines[1] == "[vae] step 10/100 (10 %) vae_loss=8 elapsed 10s eta 1m30s"
    assert lines[-1] == "[vae] step 100/100 (100 %) vae_loss=98 elapsed 1m40s eta 0s"
    assert [int(re.search(r"step (\d+)/", line).group(1)) for line in lines] == list(range(5, 101, 5))


def test_slow_steps_print_a_line_every_minute_and_the_final_step():
    # 25 s a step, 1,000 steps: 5 % (50 steps) would take 21 minutes; a line comes after each 60 s instead,
    # i.e. at the third step after the previous line (75 s), and at the last step.
    progress, lines = _run(1000, 25.0)
    steps = [int(re.search(r"step (\d+)/", line).group(1)) for line in lines]
    assert steps[:4] == [3, 6, 9, 12]
    assert steps[-1] == 1000 and all(b - a <= 3 for a, b in zip(steps, steps[1:]))
    assert lines[0] == "[vae] step 3/1000 (0 %) vae_loss=2 elapsed 1m15s eta 6h55m25s"


def test_close_writes_the_last_state_once_and_nothing_for_a_loop_that_never_stepped():
    clock, stream = Clock(), io.StringIO()
    progress = StepProgress("judge", 200, stream=stream, clock=clock)
    for step in range(1, 8):  # interrupted at 7 of 200 (3 %), under a minute: no line yet
        clock.advance(1.0)
        progress.update(step, batch_loss=2.0)
    assert _lines(stream) == []
    progress.close()
    progress.close()
    assert _lines(stream) == ["[judge] step 7/200 (3 %) batch_loss=2 elapsed 7s eta 3m13s"]
    quiet = io.StringIO()
    StepProgress("vae", 10, stream=quiet, clock=Clock()).close()
    assert quiet.getvalue() == ""


def test_console_false_writes_nothing_but_still_logs():
    recorder = Recorder()
    progress, lines = _run(10, 1.0, console=False, log_metrics=recorder, log_every_steps=5)
    assert lines == [] and progress.lines == 0
    assert recorder.calls == [(5, {"vae_loss": 3.0}), (10, {"vae_loss": 8.0})]


def test_metrics_reach_mlflow_in_batches_every_n_steps_as_window_means_and_at_the_end():
    recorder = Recorder()
    # 0.01 s a step: the step criterion (100) comes first; the last window is flushed at the last step.
    progress, _ = _run(1050, 0.01, log_metrics=recorder, log_every_steps=100, log_every_seconds=10.0)
    assert [step for step, _ in recorder.calls] == [*range(100, 1001, 100), 1050]
    assert recorder.calls[0][1] == {"vae_loss": pytest.approx(np.mean(np.arange(1, 101)))}
    assert recorder.calls[-1][1] == {"vae_loss": pytest.approx(np.mean(np.arange(1001, 1051)))}
    assert progress.calls == 11


def test_metrics_reach_mlflow_every_few_seconds_when_steps_are_slow():
    recorder = Recorder()
    _run(30, 3.0, log_metrics=recorder, log_every_steps=100, log_every_seconds=10.0)
    # 3 s a step: 10 s have passed at every fourth step after the previous call.
    assert [step for step, _ in recorder.calls] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert recorder.calls[1][1] == {"vae_loss": pytest.approx(6.5)}  # mean of steps 5..8


def test_metrics_of_several_jobs_are_filed_at_each_jobs_own_step():
    recorder, clock = Recorder(), Clock()
    progress = StepProgress("control bases", 8, recorder, stream=io.StringIO(), clock=clock, log_every_steps=4)
    for step in range(1, 9):  # two jobs taking turns: a's steps 1..4 and b's steps 1..4
        job, own = ("a", (step + 1) // 2) if step % 2 else ("b", step // 2)
        progress.update(step, metric_step=own, **{f"loss_{job}": 10.0 * own + (job == "b")})
    progress.close()
    assert recorder.calls == [
        (2, {"loss_a": 15.0, "loss_b": 16.0}),
        (4, {"loss_a": 35.0, "loss_b": 36.0}),
    ]


def test_a_failing_tracking_call_warns_once_and_the_loop_goes_on(caplog):
    def broken(metrics, step):
        raise ConnectionError("tracking server down")

    progress, lines = _run(20, 1.0, log_metrics=broken, log_every_steps=5)
    assert len(lines) == 20 and progress.calls == 0
    warnings = [r for r in caplog.records if "logging progress metrics failed" in r.getMessage()]
    assert len(warnings) == 1


def test_a_terminal_gets_a_rich_bar_instead_of_lines():
    stream = io.StringIO()
    progress = StepProgress("vae", 10, stream=stream, clock=Clock(), rich=True)
    for step in range(1, 11):
        progress.update(step, vae_loss=1.0)
    progress.close()
    assert progress.lines == 0 and "vae" in stream.getvalue() and "10/10" in stream.getvalue()


# --------------------------------------------------------------------------- the loops


GROUPS = ("African", "Asian", "Caucasian")


def _tiny_set(size: int = 32):
    from fairskin.data.stream import DecodedSet
    from fairskin.data.synthetic import DISEASES, render_lesion_image

    rows = [(g, d, fst) for g, fst in zip(GROUPS, (6, 3, 1)) for d in DISEASES[:2]]
    pixels = np.stack([render_lesion_image(fst, d, seed=k, size=size) for k, (g, d, fst) in enumerate(rows)])
    meta = pd.DataFrame({"group": [g for g, _, _ in rows], "disease": [d for _, d, _ in rows]})
    return DecodedSet(pixels, meta, GROUPS, tuple(DISEASES[:2]))


def _windows(losses, size):
    """(step, mean) of consecutive windows of ``size`` steps, the last one shorter: what MLflow should hold."""
    return [(min(i + size, len(losses)), float(np.mean(losses[i : i + size]))) for i in range(0, len(losses), size)]


def _reporter(label, recorder, every=2):
    return StepProgress(label, 0, recorder, stream=io.StringIO(), clock=Clock(), log_every_steps=every)


def test_the_vae_trains_the_same_with_a_reporter_which_sees_each_steps_loss():
    from fairskin.diffusion.base import train_tiny_vae
    from fairskin.diffusion.models import build_tiny_sd

    train = _tiny_set()
    plain = build_tiny_sd(image_size=32, seed=0).vae
    reported = build_tiny_sd(image_size=32, seed=0).vae
    expected = train_tiny_vae(plain, train, steps=5, batch_size=4, seed=0)
    recorder = Recorder()
    reporter = _reporter("vae", recorder)
    losses = train_tiny_vae(reported, train, steps=5, batch_size=4, seed=0, reporter=reporter)
    assert losses == expected  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), reported.state_dict().values()))
    assert reporter.total == 5 and reporter.closed
    windows = _windows(expected, 2)
    assert [step for step, _ in recorder.calls] == [step for step, _ in windows] == [2, 4, 5]
    assert [m["vae_loss"] for _, m in recorder.calls] == pytest.approx([mean for _, mean in windows])
    assert reporter.stream.getvalue().splitlines()[-1].startswith("[vae] step 5/5 (100 %) vae_loss=")


def test_the_base_unet_trains_the_same_with_a_reporter():
    from fairskin.config import build_config
    from fairskin.diffusion.base import subclass_prompts, train_base_unet
    from fairskin.diffusion.models import build_tiny_sd

    train = _tiny_set()
    prompts = subclass_prompts(build_config("smoke").diffusion.prompt_template, train.groups, train.diseases)
    runs = []
    for reporter in (None, _reporter("base", Recorder(), every=1)):
        parts = build_tiny_sd(image_size=32, seed=0)
        losses = train_base_unet(parts, train, prompts, steps=3, batch_size=4, seed=0, lr=1e-3, reporter=reporter)
        runs.append((losses, parts.unet.state_dict(), reporter))
    (plain, plain_state, _), (reported, state, reporter) = runs
    assert reported == plain
    assert all(torch.equal(plain_state[k], state[k]) for k in plain_state)
    assert [s for s, _ in reporter.log_metrics.calls] == [1, 2, 3]
    assert [m["unet_loss"] for _, m in reporter.log_metrics.calls] == plain


class _FakeRay:
    """Just enough of ``ray`` for :func:`train_unets_on_ray` to run its tasks here, taking turns: ``remote``
    runs the generator in this process (progress reports every 3 steps), ``wait`` hands back the streams in
    rotation, ``get`` is the identity."""

    def __init__(self, report_every: int):
        self.report_every, self.turn = report_every, 0

    def remote(self, **options):
        fake = self

        def wrap(fn):
            class Remote:
                @staticmethod
                def remote(job):
                    return fn(job, fake.report_every)

            return Remote

        return wrap

    def wait(self, streams, num_returns=1, timeout=None):
        self.turn += 1
        pick = streams[self.turn % len(streams)]
        return [pick], [s for s in streams if s is not pick]

    def get(self, item):
        return item

    def cancel(self, stream, force=False):
        pass


def test_remote_base_unets_stream_their_losses_to_the_drivers_reporter(monkeypatch):
    """Two jobs of 7 steps, reports every 3 steps: the console counts 14 steps of both together, and MLflow
    gets each job's losses at its own steps under its own name (means of the losses the jobs return)."""
    import copy
    import sys

    from fairskin.diffusion.base import train_unets_on_ray, unet_job
    from fairskin.diffusion.models import build_tiny_sd
    from fairskin.runtime import thread_count_restored

    train = _tiny_set()
    parts = build_tiny_sd(image_size=32, seed=0)
    prompts = [f"p{i}" for i in range(len(train.groups) * len(train.diseases))]
    jobs = {
        "African": unet_job(parts, train, prompts, steps=7, batch_size=4, seed=0, lr=1e-3),
        "Type V-VI": unet_job(copy.deepcopy(parts), train.without_group("African"), prompts, 7, 4, 0, 1e-3),
    }
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(report_every=3))
    recorder = Recorder()
    reporter = _reporter("control bases", recorder, every=1)
    with thread_count_restored():  # the task's configure_worker() sets this process's threads
        losses = train_unets_on_ray(jobs, reporter=reporter)
    assert reporter.total == 14 and reporter.step == 14 and reporter.closed
    assert reporter.stream.getvalue().splitlines()[-1].startswith("[control bases] step 14/14 (100 %)")
    logged: dict[str, dict[int, float]] = {}
    for step, metrics in recorder.calls:
        for key, value in metrics.items():
            assert step not in logged.setdefault(key, {})
            logged[key][step] = value
    assert set(logged) == {"unet_loss_african", "unet_loss_type_v-vi"}
    for name, key in (("African", "unet_loss_african"), ("Type V-VI", "unet_loss_type_v-vi")):
        assert len(losses[name]) == 7
        # Each report (steps 1-3, 4-6, then the last step with the weights) is one burst: its mean at its last step.
        windows = _windows(losses[name], 3)
        assert sorted(logged[key]) == [step for step, _ in windows] == [3, 6, 7]
        assert [logged[key][step] for step, _ in windows] == pytest.approx([mean for _, mean in windows])


def test_the_classifier_trains_the_same_with_a_reporter_counting_batches_over_epochs():
    from fairskin.classify.train import ClassifierData, train_classifier
    from fairskin.config import ClassifierConfig

    data = ClassifierData(train=_tiny_set(16), val=_tiny_set(16), test=_tiny_set(16))
    cfg = ClassifierConfig(image_size=16, epochs=2, batch_size=4, bootstrap_samples=0)
    plain = train_classifier(data, cfg, seed=3, evaluate_test=False)
    recorder = Recorder()
    reporter = _reporter("reference", recorder, every=1)
    reported = train_classifier(data, cfg, seed=3, evaluate_test=False, reporter=reporter)
    drop = {"epoch_seconds"}
    np.testing.assert_equal(  # NaN-aware: a group absent from a tiny val split has no accuracy
        [{k: v for k, v in h.items() if k not in drop} for h in reported.history],
        [{k: v for k, v in h.items() if k not in drop} for h in plain.history],
    )
    ours, theirs = reported.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # 6 rows in batches of 4: 2 batches an epoch, 4 over the two epochs; their mean per epoch is train_loss.
    assert reporter.total == 4 and [s for s, _ in recorder.calls] == [1, 2, 3, 4]
    batch = [m["batch_loss"] for _, m in recorder.calls]
    assert np.mean(batch[:2]) == pytest.approx(plain.history[0]["train_loss"])
    assert np.mean(batch[2:]) == pytest.approx(plain.history[1]["train_loss"])
