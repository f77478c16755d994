"""Durability (issue 14, points 3, 4, 5, 9): the runs-root lock, keys from contents, studies
that fail loudly, non-finite metrics and losses made visible."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from fairskin.config import build_config

LOCK_FILE = ".fairskin.lock"  # fairskin.lock.LOCK_FILE (imported inside tests, so each fails alone on older code)
PIPELINE = [sys.executable, str(REPO / "jobs" / "full_pipeline.py")]


def _write_lock(root: Path, **fields) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    body = {
        "host": socket.gethostname(),
        "pid": 1,
        "pid_start": "",
        "boot_id": "",
        "command": "someone else's job",
        "since": "2026-01-01 00:00:00 UTC",
        "token": "t0",
        **fields,
    }
    (root / LOCK_FILE).write_text(json.dumps(body))
    return root / LOCK_FILE


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------- the lock


def test_a_dead_holder_on_this_host_is_taken_over_and_another_host_is_refused(tmp_path):
    from fairskin.lock import RunsRootLocked, acquire, holds, release

    root = tmp_path / "runs"
    # A holder on this host whose PID no longer runs, and one whose PID now names another process.
    for stale in ({"pid": _dead_pid()}, {"pid": os.getpid(), "pid_start": "1"}):
        _write_lock(root, **stale)
        body = acquire(root, echo=lambda *_: None)
        assert body["pid"] == os.getpid() and json.loads((root / LOCK_FILE).read_text())["token"] == body["token"]
        release(root)
        assert not (root / LOCK_FILE).exists()
    # Another host's lock: its holder may be alive there; refused unless broken on purpose.
    _write_lock(root, host="gpu-node-7", pid=os.getpid())
    with pytest.raises(
        RunsRootLocked, match=r"someone else's job.*gpu-node-7.*PID \d+.*since 2026-01-01.*--break-lock"
    ):
        acquire(root)
    assert json.loads((root / LOCK_FILE).read_text())["host"] == "gpu-node-7"
    acquire(root, break_lock=True, echo=lambda *_: None)
    assert holds(root) and json.loads((root / LOCK_FILE).read_text())["pid"] == os.getpid()
    # Re-entrant within the process (the pipeline's tune stage calls run_study).
    acquire(root)
    release(root)
    assert (root / LOCK_FILE).exists()
    release(root)
    assert not (root / LOCK_FILE).exists() and not holds(root)


def test_a_live_holder_refuses_a_pipeline_at_once_with_exit_2_naming_it(tmp_path):
    root = tmp_path / "runs"
    holder = subprocess.Popen(["sleep", "120"])
    try:
        _write_lock(root, pid=holder.pid, pid_start="", command="python jobs/full_pipeline.py --preset demo")
        started = time.time()
        out = subprocess.run(
            [*PIPELINE, "--preset", "smoke", "--stages", "prepare", f"runtime.runs_root={root}"],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2, out.stderr
        assert f"PID {holder.pid}" in out.stderr and socket.gethostname() in out.stderr
        assert "full_pipeline.py --preset demo" in out.stderr and "Traceback" not in out.stderr
        assert not (root / "stages").exists() and not (root / "mlflow.db").exists()
        assert time.time() - started < 120
    finally:
        holder.kill()
        holder.wait()


def test_two_pipelines_started_at_once_do_not_corrupt_the_runs_root(tmp_path):
    """Both started together: one runs, the other is refused at once (exit 2, naming the holder)."""
    root = tmp_path / "runs"
    cmd = [*PIPELINE, "--preset", "smoke", "--stages", "prepare", f"runtime.runs_root={root}"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    refused = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    assert "is in use" in refused and "PID" in refused and "Traceback" not in refused
    stages = root / "stages"
    assert [p.name.split("-")[0] for p in stages.iterdir()] == ["prepare"]  # one folder per key, no temporaries
    assert not [p for p in root.rglob("*") if any(t in p.name for t in (".partial-", ".old-", ".tmp-", ".work"))]
    assert not (root / LOCK_FILE).exists()
    with sqlite3.connect(root / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM runs WHERE name LIKE 'pipeline-%'").fetchone()[0] == 1


def test_stale_partials_of_another_host_are_kept(tmp_path):
    from fairskin.io import host_tag
    from fairskin.pipeline.keyed import clean_stale_partials

    dead = _dead_pid()
    mine = tmp_path / f".prepare-abc.partial-{dead}-0123abcd@{host_tag()}"
    old_style = tmp_path / f".prepare-abc.partial-{dead}-0123abce"
    theirs = tmp_path / f".prepare-abc.partial-{dead}-0123abcf@other-node.cluster"
    for folder in (mine, old_style, theirs):
        folder.mkdir()
    assert sorted(clean_stale_partials(tmp_path)) == sorted([mine, old_style])
    assert theirs.is_dir()


def test_the_ablation_job_is_locked_out_and_break_lock_takes_over(tmp_path, capsys, monkeypatch):
    import importlib.util

    from fairskin.lock import holds

    spec = importlib.util.spec_from_file_location("ablation_job", REPO / "jobs" / "ablation.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    root = tmp_path / "runs"
    _write_lock(root, host="gpu-node-7")
    args = ["--preset", "smoke", f"runtime.runs_root={root}"]
    with pytest.raises(SystemExit) as exc:
        job.main(args)
    assert exc.value.code == 2 and "gpu-node-7" in capsys.readouterr().err
    assert not (root / "mlflow.db").exists()
    seen = []
    monkeypatch.setattr(job, "_report", lambda args, config: seen.append(holds(root)) or 0)
    assert job.main([*args, "--break-lock"]) == 0 and seen == [True]  # it ran, holding the lock
    assert not (root / LOCK_FILE).exists()


def test_the_tune_command_is_refused_on_a_runs_root_in_use(tmp_path, capsys):
    from fairskin.tune.__main__ import main

    root = tmp_path / "runs"
    _write_lock(root, host="gpu-node-7", command="python -m fairskin.tune --space ablation")
    with pytest.raises(SystemExit) as exc:
        main(["--space", "ethnic_ratio", "--preset", "smoke", f"runtime.runs_root={root}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "gpu-node-7" in err and "--space ablation" in err and "--break-lock" in err
    assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE]  # nothing ran: no stage, no MLflow store


# --------------------------------------------------------------------------- keys from contents


def _stage_result(name: str, key: str, path: Path):
    from fairskin.pipeline.keyed import StageResult

    return StageResult(name, key, path, True, 0.0)


def test_editing_the_search_space_yaml_changes_the_tune_key(tmp_path, monkeypatch):
    from fairskin.pipeline import pipeline_stage_key

    spaces = tmp_path / "spaces"
    shutil.copytree(REPO / "tune_spaces", spaces)
    config = build_config("smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}"])
    inputs = {
        "prepare": _stage_result("prepare", "p" * 12, tmp_path),
        "generate": _stage_result("generate", "g" * 12, tmp_path),
    }
    original = pipeline_stage_key("tune", config, inputs)
    monkeypatch.setenv("FAIRSKIN_TUNE_SPACES", str(spaces))
    assert pipeline_stage_key("tune", config, inputs) == original  # a copy: same contents, same key
    text = (spaces / "ablation.yaml").read_text()
    (spaces / "ablation.yaml").write_text(text + "\nstartup_trials: 7\n")
    assert pipeline_stage_key("tune", config, inputs) != original
    (spaces / "ablation.yaml").write_text(text + "\n# a comment only\n")
    assert pipeline_stage_key("tune", config, inputs) == original  # the resolved space, not the bytes
    assert (
        pipeline_stage_key(
            "report",
            config,
            {"reference": inputs["prepare"], "evaluate": inputs["prepare"], "tune": inputs["generate"]},
        )
        is not None
    )


def test_editing_the_csv_or_an_image_changes_the_prepare_key_but_copying_or_touching_does_not(tmp_path, monkeypatch):
    from fairskin.pipeline import pipeline_stage_key

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "meta.csv").write_text("md5hash,label\nabc,x\n")
    (data / "images" / "abc.png").write_bytes(b"\x89PNG fake image bytes")

    def key(csv, images, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        config = build_config(
            "smoke",
            overrides=[
                f"runtime.runs_root={tmp_path / 'runs'}",
                "data.source=fitzpatrick17k",
                f"data.csv_path={csv}",
                f"data.image_root={images}",
            ],
        )
        return pipeline_stage_key("prepare", config, {})

    original = key(data / "meta.csv", data / "images")
    assert key("meta.csv", "images", cwd=data) == original  # relative paths are resolved before hashing
    shutil.copytree(data, tmp_path / "copy")  # another place, other mtimes: same contents, same key
    assert key(tmp_path / "copy" / "meta.csv", tmp_path / "copy" / "images") == original
    os.utime(data / "meta.csv", (1, 1))
    assert key(data / "meta.csv", data / "images") == original
    (data / "meta.csv").write_text("md5hash,label\nabc,y\n")
    edited_csv = key(data / "meta.csv", data / "images")
    assert edited_csv != original
    (data / "images" / "abc.png").write_bytes(b"\x89PNG other image bytes")
    assert key(data / "meta.csv", data / "images") not in (original, edited_csv)
    cache = json.loads((tmp_path / "runs" / "cache" / "fingerprints.json").read_text())["entries"]
    assert any(k.startswith("dir:") for k in cache) and any(k.startswith("file:") for k in cache)


def test_a_local_model_folder_is_keyed_by_its_weights(tmp_path):
    from fairskin.pipeline import pipeline_stage_key

    model = tmp_path / "vit"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights-1")
    config = build_config("smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}", f"classifier.model={model}"])
    prepare = {"prepare": _stage_result("prepare", "p" * 12, tmp_path)}
    before = pipeline_stage_key("reference", config, prepare)
    (model / "model.safetensors").write_bytes(b"weights-2")
    assert pipeline_stage_key("reference", config, prepare) != before


def test_every_external_input_is_declared_and_loggable():
    from mlflow.utils.validation import _validate_param_name

    from fairskin.pipeline import STAGES
    from fairskin.pipeline.stage import EXTERNAL

    for stage in STAGES.values():
        assert set(stage.external) <= set(EXTERNAL), stage.name
    for name in EXTERNAL:
        _validate_param_name(f"external.{name}")  # the pipeline logs each fingerprint as a param
    assert "tune.space_content" in STAGES["tune"].external and "data.csv_path" in STAGES["prepare"].external


def test_force_redoes_the_stages_downstream_of_the_forced_one():
    from fairskin.pipeline import STAGES, forced_stages

    plan = list(STAGES.values())
    assert forced_stages(plan, ["generate"]) == {"generate", "evaluate", "tune", "report"}
    assert forced_stages(plan, ["reference"]) == {"reference", "evaluate", "report"}
    assert forced_stages(plan[:1], ["prepare"]) == {"prepare"}
    assert forced_stages(plan, ["all"]) == set(STAGES)


# --------------------------------------------------------------------------- fail loudly


_FAILING_SPACE = """\
description: every trial fails (a classifier folder that does not exist)
search: random
trials: 2
objectives: [{metric: val_accuracy, mode: max}]
fixed: {mode: random}
parameters:
  - {name: classifier.model, kind: choice, values: [/nonexistent/vit-folder]}
"""


def test_an_invalid_classifier_value_in_a_space_fails_before_ray_naming_the_field(
    tmp_path, monkeypatch, capsys, prepared_smoke
):
    import fairskin.runtime
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.tune.__main__ import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(fairskin.runtime, "init_ray", no_ray)
    (tmp_path / "bad.yaml").write_text(
        _FAILING_SPACE.replace(
            "- {name: classifier.model, kind: choice, values: [/nonexistent/vit-folder]}",
            "- {name: classifier.batch_size, kind: int, low: 0, high: 8}",
        )
    )
    config, prepare = prepared_smoke
    pool = write_synthetic_pool(config, tmp_path / "pool", per_subclass=5)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--space",
                str(tmp_path / "bad.yaml"),
                "--preset",
                "smoke",
                "--pool",
                f"vanilla={pool}",
                "--real-shards",
                str(prepare.path / "shards"),
                f"runtime.runs_root={tmp_path / 'runs'}",
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "classifier.batch_size" in err and "greater than or equal to 1" in err


@pytest.mark.ray
def test_a_study_whose_every_trial_fails_fails_and_is_not_recorded_as_done(
    ray_session, prepared_smoke, tmp_path, monkeypatch, capsys
):
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.pipeline import STAGES, pipeline_stage_key
    from fairskin.pipeline.keyed import is_finished, run_stage, stage_dir
    from fairskin.pipeline.stage import StageContext, external_fingerprints
    from fairskin.tracking import RunHandle
    from fairskin.tune.__main__ import main
    from fairskin.tune.study import StudyError, StudyFailed

    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "failing.yaml").write_text(_FAILING_SPACE)
    monkeypatch.setenv("FAIRSKIN_TUNE_SPACES", str(spaces))
    _, prepare = prepared_smoke
    overrides = [
        f"runtime.runs_root={tmp_path / 'runs'}",
        "tune.space=failing",
        "tune.num_trials=2",
        "classifier.epochs=1",
        "tune.train_seeds=1",
    ]
    config = build_config("smoke", overrides=overrides)
    generate = tmp_path / "generate"
    write_synthetic_pool(config, generate / "vanilla", per_subclass=5)
    # The pipeline's tune stage: the study raises, and no finished stage folder is left.
    inputs = {"prepare": prepare, "generate": _stage_result("generate", "g" * 12, generate)}
    stage = STAGES["tune"]
    with pytest.raises(StudyFailed, match=r"none of its 2 trial\(s\) finished(.|\n)*vit-folder") as failed:
        run_stage(
            config,
            "tune",
            stage.reads,
            lambda out: stage.body(
                StageContext(config, out, inputs, RunHandle(None, "", ""), pipeline_stage_key("tune", config, inputs))
            ),
            inputs=inputs,
            version=stage.version,
            external=external_fingerprints(stage, config),
        )
    assert isinstance(failed.value, StudyError)
    assert not is_finished(stage_dir(config, "tune", pipeline_stage_key("tune", config, inputs)))
    assert not [p for p in (tmp_path / "runs" / "stages").iterdir() if p.name.startswith(("tune-", ".tune-"))]
    # The command line: exit code 1, quoting the trials' errors.
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--space",
                "failing",
                "--preset",
                "smoke",
                "--pool",
                f"vanilla={generate / 'vanilla'}",
                "--real-shards",
                str(prepare.path / "shards"),
                *overrides,
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "none of its 2 trial(s) finished" in err and "vit-folder" in err


# --------------------------------------------------------------------------- divergence made visible


def test_non_finite_metrics_are_tagged_not_dropped_silently(smoke_config):
    from mlflow import MlflowClient

    from fairskin.tracking import TAG_NONFINITE, Tracker

    tracker = Tracker.from_config(smoke_config)
    with tracker.run("diverging") as run:
        run.log_metrics({"loss": 0.5, "accuracy": 0.9}, step=1)
        run.log_metrics({"loss": float("nan"), "accuracy": 0.8}, step=2)
        run.log_metrics({"grad_norm": float("inf"), "loss": float("nan")}, step=3)
    data = MlflowClient(tracker.tracking_uri).get_run(run.run_id).data
    assert data.tags[TAG_NONFINITE] == "grad_norm,loss"
    assert data.tags[f"{TAG_NONFINITE}.loss"] == "nan at step 2"
    assert data.tags[f"{TAG_NONFINITE}.grad_norm"] == "inf at step 3"
    assert data.metrics == {"loss": 0.5, "accuracy": 0.8}


def test_a_nan_loss_stops_the_fine_tune_naming_the_first_bad_step():
    import torch

    from fairskin.diffusion.losses import NonFiniteLossError, check_finite_loss, note_nonfinite

    flag = torch.zeros((), dtype=torch.long)
    for step, loss in enumerate([1.0, 0.5, 0.25], start=1):
        flag = note_nonfinite(flag, torch.tensor(loss, requires_grad=True) * 1, step)
    check_finite_loss(flag, "fine-tune of vanilla")  # all finite: no error
    for step, loss in enumerate([0.2, float("nan"), float("inf"), 0.1], start=4):
        flag = note_nonfinite(flag, torch.tensor(loss), step)
    assert flag.dtype == torch.long and flag.device.type == "cpu"
    with pytest.raises(NonFiniteLossError, match="fine-tune of vanilla.*from step 5 on"):
        check_finite_loss(flag, "fine-tune of vanilla")
