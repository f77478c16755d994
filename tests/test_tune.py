"""Tune studies: search spaces, pool checks, MLflow parent/child runs, and SIGINT + --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from study_cli import finished_trials, signal_when

from fairskin.classify.augment import check_against_pool, plan_counts
from fairskin.config import build_config
from fairskin.tracking import PARENT_TAG
from fairskin.tune.spaces import SpaceError, available_spaces, load_space, parse_space, resolve_space, sample_simplex

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("African", "Asian", "Caucasian")
DISEASES = tuple(build_config("smoke").data.diseases)


def _pool(per: int) -> dict:
    return {(g, d): per for g in GROUPS for d in DISEASES}


@pytest.fixture(scope="session")
def smoke_pool(prepared_smoke, tmp_path_factory):
    """A procedural pool of 20 images per subclass (the space checks need >= 10 at smoke scale)."""
    from fairskin.data.prepare import write_synthetic_pool

    config, _ = prepared_smoke
    return write_synthetic_pool(config, tmp_path_factory.mktemp("pool") / "shards", per_subclass=20)


def _config(tmp_path, *overrides):
    return build_config("smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}", *overrides])


# --------------------------------------------------------------------------- spaces (no Ray)


def test_every_space_file_loads_and_resolves_at_smoke_scale():
    config = build_config("smoke")
    assert {"ethnic_ratio", "aug_count", "downstream", "ablation"} <= set(available_spaces())
    pools = {"vanilla": _pool(20), "fairskin_s": _pool(20)}
    for name in available_spaces():
        space = load_space(name)
        resolved = resolve_space(
            space, config, pools, _pool(5), variant=None if space.parameter("variant") else "vanilla"
        )
        assert resolved.metrics and (
            space.trainable == "generator" or all(m.startswith("val_") for m in resolved.metrics)
        )
    scale = config.tune.count_scale
    aug = resolve_space(load_space("aug_count"), config, pools, {}, variant="vanilla")
    d = aug.dim("per_subclass")  # 500..900 step 100 in paper units, times tune.count_scale
    assert (d.low, d.high, d.step) == (round(500 * scale), round(900 * scale), max(1, round(100 * scale)))
    abl = resolve_space(load_space("ablation"), config, pools, {})
    assert set(abl.variants) == {"vanilla", "fairskin_s"} and abl.train_seeds == (0, 1, 2)
    assert abl.fixed_plan.total == round(7500 * scale)


def test_simplex_points_are_all_valid_for_the_pool():
    config = build_config("smoke")
    pool = _pool(20)
    space = resolve_space(load_space("ethnic_ratio"), config, {"vanilla": pool}, {}, variant="vanilla")
    d = space.dim("proportions")
    assert d.total == round(7500 * config.tune.count_scale)
    assert all(h <= min(1.0, 100 / d.total) for h in d.highs)  # 5 diseases x 20 images per group
    rng = np.random.default_rng(0)
    for u in [*rng.random((500, 2)), (0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)]:
        p = sample_simplex(list(u), d.lows, d.highs)
        assert abs(sum(p) - 1) < 1e-9 and all(lo - 1e-12 <= x <= hi + 1e-12 for x, lo, hi in zip(p, d.lows, d.highs))
        plan = space.plan_for({"proportions": dict(zip(d.groups, p))})
        check_against_pool(plan, plan_counts(plan, {}, GROUPS, DISEASES), pool, DISEASES)  # never raises
    # The exact sampler is uniform on the (bounded) simplex: mean 1/3 each without bounds.
    points = np.array([sample_simplex(list(u), [0, 0, 0], [1, 1, 1]) for u in rng.random((4000, 2))])
    assert np.allclose(points.mean(0), 1 / 3, atol=0.02)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"parameters": [{"name": "per_subclass", "kind": "int", "low": 900, "high": 500}]},
            r"parameters\.0: parameter 'per_subclass': low \(900\.0\) is above high \(500\.0\)",
        ),
        (
            {"parameters": [{"name": "proportions", "kind": "simplex", "total": 10, "low": 0.5}]},
            r"parameter 'proportions': no proportions over 3 groups sum to 1 within \[0\.5, 1\.0\]",
        ),
        (
            {"parameters": [{"name": "proportions", "kind": "simplex", "total": 10}], "fixed": {"mode": "resample"}},
            r"parameter 'proportions': downstream mode 'resample'",
        ),
        (
            {"parameters": [{"name": "learning_rate", "kind": "float", "low": 1, "high": 2}]},
            r"parameter 'learning_rate': unknown target",
        ),
        ({"objectives": [{"metric": "test_accuracy"}]}, r"test figures never steer"),
        (
            {
                "objectives": [{"metric": "val_accuracy"}, {"metric": "val_dp", "mode": "min"}],
                "scheduler": {"kind": "asha"},
            },
            r"'asha' stops trials on one metric",
        ),
    ],
)
def test_invalid_spaces_name_the_field(change, message):
    base = {
        "name": "t",
        "objectives": [{"metric": "val_accuracy"}],
        "parameters": [{"name": "per_subclass", "kind": "int", "low": 1, "high": 2}],
    }
    with pytest.raises(SpaceError, match=message):
        space = parse_space({**base, **change})
        resolve_space(space, build_config("smoke"), {"vanilla": _pool(20)}, {}, variant="vanilla")


def test_spaces_that_exceed_the_pool_fail_before_any_trial(tmp_path, prepared_smoke):
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.tune import run_study

    config = _config(tmp_path)
    scale = config.tune.count_scale
    total, high = round(7500 * scale), round(900 * scale)
    per = max(1, high // 2)  # too few for aug_count's 900 and for ethnic_ratio's 7,500 over 3 groups
    assert 15 * per < total
    small = write_synthetic_pool(config, tmp_path / "small_pool", per_subclass=per)
    shards = prepared_smoke[1].path / "shards"
    # ethnic_ratio: 7,500 x scale images, but `per` x 5 diseases per group (15 x per in all).
    largest = 15 * per
    with pytest.raises(
        SpaceError,
        match=rf"parameter 'proportions': total 7500 \(scaled to {total} .*"
        rf"The largest valid total is {int(largest / scale + 1e-9)} "
        rf"\(scaled {largest}\)",
    ):
        run_study(config, "ethnic_ratio", {"vanilla": small}, shards)
    with pytest.raises(
        SpaceError,
        match=rf"parameter 'per_subclass': high 900 \(scaled to {high} .*"
        rf"the largest valid value is {int(per / scale + 1e-9)} \(scaled {per}\)",
    ):
        run_study(config, "aug_count", {"vanilla": small}, shards)
    assert not (config.runtime.runs_root / "tune").exists()  # no study folder, no trial, no run


# --------------------------------------------------------------------------- studies (Ray)


def _run_to_end(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a study CLI to its end; one that outlives ``timeout`` fails the test with the tail of what it printed
    (``subprocess.run`` would keep that in the exception, which pytest does not show)."""
    try:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # The exception holds bytes whatever ``text`` says.
        out, err = ((data or b"").decode(errors="replace") for data in (exc.stdout, exc.stderr))
        pytest.fail(f"{' '.join(cmd[:4])} ... ran past {timeout} s\n{out[-3000:]}\n{err[-6000:]}")


def _runs(config, study):
    from fairskin.tune.study import experiment_name

    client = MlflowClient(config.tracking_uri())
    exp = client.get_experiment_by_name(experiment_name(config, study))
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    return client, parents, children


@pytest.mark.ray
def test_smoke_study_one_parent_three_children(ray_session, prepared_smoke, smoke_pool, tmp_path):
    from fairskin.tune import run_study

    config = _config(tmp_path, "tune.confirm_seeds=2")
    # This process's own Ctrl-C handler, to see that it survives the study: Tune's fit() installs its own on the
    # main thread and puts the previous one back only once a SIGINT arrives.
    interrupts = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupts.append(1))
    try:
        result = run_study(
            config,
            "ethnic_ratio",
            {"vanilla": smoke_pool},
            prepared_smoke[1].path / "shards",
            trials=3,
            echo=lambda *_: None,
        )
        signal.raise_signal(signal.SIGINT)
        assert interrupts == [1]  # ours, not Tune's
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not result.interrupted and len(result.trials) == 3
    assert set(result.trials["state"]) == {"finished"}
    client, parents, children = _runs(config, result.name)
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    # The best trial and the Pareto points are re-trained with 2 new classifier seeds each (1 and 2:
    # the search used seed 0), as children of the parent tagged `confirm`, and reported with intervals.
    confirms = [c for c in children if c.data.tags.get("fairskin.kind") == "confirm"]
    children = [c for c in children if c.data.tags.get("fairskin.kind") == "tune"]
    points = {result.best["trial_id"], *result.pareto["trial_id"]}
    assert sorted((c.data.tags["fairskin.confirms"], c.data.params["trial.seed"]) for c in confirms) == sorted(
        (t, s) for t in points for s in ("1", "2")
    )
    assert all(c.info.status == "FINISHED" and "test_accuracy" in c.data.metrics for c in confirms)
    table = result.confirmed.set_index("trial_id")
    assert set(table.index) == points and (table["seeds"] == 2).all()
    for metric in ("val_accuracy", "test_accuracy"):
        # an interval wherever the two seeds differ; equal values (a tiny test split) have none, and say so
        tied = table[f"{metric}_note"].fillna("").str.startswith("no spread")
        inside = (table[f"{metric}_low"] <= table[metric]) & (table[metric] <= table[f"{metric}_high"])
        assert (inside | tied).all() and (tied == table[f"{metric}_low"].isna()).all()
    searched = result.trials.set_index("trial_id")
    assert table["val_accuracy_search"].to_dict() == {t: searched.loc[t, "val_accuracy"] for t in points}
    assert len(children) == 3 and {c.data.tags[PARENT_TAG] for c in children} == {result.parent_run_id}
    for c in children:
        tags, params, metrics = c.data.tags, c.data.params, c.data.metrics
        assert tags["fairskin.study"] == result.name and tags["fairskin.space"] == "ethnic_ratio"
        assert tags["fairskin.variant"] == "vanilla" and tags["fairskin.mode"] == "random"
        assert params["classifier.epochs"] == "2" and params["preset"] == "smoke"
        shares = [float(params[f"trial.proportions.{g}"]) for g in GROUPS]
        assert abs(sum(shares) - 1) < 1e-6
        assert c.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")] == [1, 2]
        assert "test_accuracy" in metrics and "test_essp_fairseg" in metrics
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["fairskin.study"] == result.name
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "study")}
    assert {
        "study/best_trial.json",
        "study/pareto_front.csv",
        "study/objective_by_trial.png",
        "study/proportions_ternary.png",
        "study/confirmed.csv",
        "study/confirmed.png",
    } <= artifacts
    assert 1 <= len(result.pareto) <= 3 and result.best["trial_id"] in set(result.trials["trial_id"])
    runs_map = json.loads((result.path / "mlflow_runs.json").read_text())
    assert {v["run_id"] for v in runs_map.values()} == {c.info.run_id for c in children}
    # Where the study's time went (issue 15): every phase timed, the parts adding up to the whole.
    from fairskin.tune.study import PHASES

    timings = result.timings
    assert set(PHASES) <= set(timings) and all(timings[k] >= 0 for k in PHASES)
    assert timings["fit.trials"] > 0 and timings["report.confirm"] > 0
    for whole in ("fit", "report"):
        parts = sum(v for k, v in timings.items() if k.startswith(f"{whole}."))
        assert abs(parts - timings[whole]) < 0.5, (whole, parts, timings[whole])
    assert abs(sum(timings[k] for k in PHASES) - result.seconds) < 1.0
    # Tune's CSV and JSON trial logs are kept; its TensorBoard logger (which imports torch into the
    # driver before the first trial) is not added, and the switch that leaves it out is put back.
    trial_dirs = [d for d in (result.path / "trials").iterdir() if d.is_dir() and d.name.startswith("classifier")]
    assert len(trial_dirs) == 3
    assert all((d / "result.json").is_file() and (d / "progress.csv").is_file() for d in trial_dirs)
    assert not list((result.path / "trials").rglob("events.out.tfevents*"))
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ


def test_a_trial_process_does_not_import_mlflow():
    """A trial's actor unpickles fairskin.tune.trainable: the package must not pull in the study module and
    MLflow with it (seconds of imports before each actor's first trial; issue 15)."""
    code = (
        "import sys, fairskin.tune.trainable; "
        "print(sorted(m for m in ('mlflow', 'fairskin.tune.study', 'torch') if m in sys.modules)); "
        "from fairskin.tune import run_study, load_space; print(run_study.__module__, load_space.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "fairskin.tune.study fairskin.tune.spaces"], out.stdout


@pytest.mark.ray
def test_grid_space_runs_every_mode_once(ray_session, prepared_smoke, smoke_pool, tmp_path):
    from fairskin.tune import run_study

    config = _config(tmp_path)
    result = run_study(
        config, "downstream", {"vanilla": smoke_pool}, prepared_smoke[1].path / "shards", echo=lambda *_: None
    )
    assert not result.interrupted and len(result.trials) == 3  # 1 variant x 3 modes x 1 seed
    _, parents, children = _runs(config, result.name)
    assert len(parents) == 1 and parents[0].data.tags["fairskin.mode"] == "searched"
    assert sorted(c.data.tags["fairskin.mode"] for c in children) == ["random", "resample", "reweight"]
    assert {c.data.params["trial.variant"] for c in children} == {"vanilla"}


@pytest.mark.ray
def test_each_trial_draws_from_the_pool_it_is_tagged_with(ray_session, prepared_smoke, smoke_pool, tmp_path):
    """Two pools with different images: a trial of variant v reads v's pool rows, and its run is tagged
    with the fingerprint of that same pool (what the report joins on)."""
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.data.shards import read_metadata
    from fairskin.provenance import TAG_POOL, shard_fingerprint
    from fairskin.tune.mlflow_callback import trial_provenance
    from fairskin.tune.study import check_study, input_fingerprints
    from fairskin.tune.trainable import load_trial_data, put_inputs

    config, prepare = prepared_smoke
    other = write_synthetic_pool(config, tmp_path / "other", per_subclass=20, namespace="other-pool")
    pools = {"vanilla": smoke_pool, "fairskin_s": other}
    metas = {v: read_metadata(p) for v, p in pools.items()}
    assert set(metas["vanilla"]["sha256"]).isdisjoint(metas["fairskin_s"]["sha256"])  # visibly different pools
    real = prepare.path / "shards"
    space = check_study(config, load_space("downstream"), pools, real)
    inputs = put_inputs(real, pools, space, config.classifier)
    fingerprints, _ = input_fingerprints(pools, real)
    for variant, folder in pools.items():
        drawn = load_trial_data(inputs, variant).pool.meta
        assert set(drawn["id"]) == set(metas[variant]["id"])
        tags = trial_provenance({"variant": variant, "mode": "random"}, fingerprints, {})
        assert tags[TAG_POOL] == shard_fingerprint(folder) == fingerprints[variant]
        assert tags["fairskin.variant"] == variant and tags["fairskin.repeat"] == "0"
    assert fingerprints["vanilla"] != fingerprints["fairskin_s"]


@pytest.mark.ray
def test_a_study_killed_then_interrupted_then_resumed_runs_every_planned_trial_once(
    ray_session, prepared_smoke, smoke_pool, tmp_path
):
    """Issue 14's acceptance and Ctrl-C, on one study of 4 planned trials (one at a time): SIGKILLed once two
    trials have finished; ``--resume``, interrupted (SIGINT: exit 130) once a trial of its own has finished;
    ``--resume --json`` again to the end. Then: exactly the planned child runs under one FINISHED parent, each
    FINISHED, each epoch logged once, no run left RUNNING (deleted ones included); every trial the interrupted run
    had started kept its run; the runs of trials Tune's snapshot never saw before the kill were superseded."""
    from mlflow.entities import ViewType

    config = _config(tmp_path)
    study, planned, epochs = "interrupted", 4, 3
    cmd = [
        sys.executable,
        "-m",
        "fairskin.tune",
        "--space",
        "ethnic_ratio",
        "--preset",
        "smoke",
        "--trials",
        str(planned),
        "--study",
        study,
        "--pool",
        f"vanilla={smoke_pool}",
        "--real-shards",
        str(prepared_smoke[1].path / "shards"),
        f"runtime.runs_root={config.runtime.runs_root}",
        f"classifier.epochs={epochs}",
        "tune.max_concurrent_trials=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs_file = config.runtime.runs_root / "tune" / study / "mlflow_runs.json"

    # 1. SIGKILL once two trials have finished. Tune snapshots its experiment (trials, searcher) every ~10 s; here
    # only once, at its first step, as if the kill fell inside that period: the restored Tuner has not seen trials
    # the killed process ran.
    first_env = {**env, "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    code = signal_when(
        cmd,
        first_env,
        tmp_path / "first.log",
        lambda: len(finished_trials(runs_file)) >= 2,
        signal.SIGKILL,
        "two finished trials",
    )
    assert code == -signal.SIGKILL
    killed_map = json.loads(runs_file.read_text())
    assert 2 <= len(finished_trials(runs_file)) < planned, "the study ended before the kill"

    # 2. --resume, then Ctrl-C once a trial of this run has finished (a run id the killed run did not finish).
    before = set(finished_trials(runs_file).values())
    code = signal_when(
        [*cmd, "--resume"],
        env,
        tmp_path / "second.log",
        lambda: bool(set(finished_trials(runs_file).values()) - before),
        signal.SIGINT,
        "a trial finished after the resume",
    )
    assert code == 130, (tmp_path / "second.log").read_text()[-3000:]
    interrupted_map = json.loads(runs_file.read_text())
    assert 1 <= len(finished_trials(runs_file)) < planned, interrupted_map

    # 3. --resume again, to the end.
    resumed = _run_to_end([*cmd, "--resume", "--json"], env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["trials"] == planned and not summary["interrupted"]
    final_map = json.loads(runs_file.read_text())
    assert len(final_map) == planned and {e["state"] for e in final_map.values()} == {"finished"}
    for tid, entry in interrupted_map.items():  # a trial started before the Ctrl-C kept its run
        assert final_map[tid]["run_id"] == entry["run_id"], tid
    client, parents, children = _runs(config, study)
    assert [p.info.run_id for p in parents] == [summary["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    assert len(children) == planned, [(c.info.run_id, c.info.status) for c in children]
    assert sorted(c.info.run_id for c in children) == sorted(e["run_id"] for e in final_map.values())
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags[PARENT_TAG] == summary["parent_run_id"]
        for key in c.data.metrics:
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            assert len(steps) == len(set(steps)), (c.data.tags["fairskin.trial_id"], key, steps)
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")] == list(range(1, epochs + 1))
        assert "test_accuracy" in c.data.metrics
    every = client.search_runs([parents[0].info.experiment_id], run_view_type=ViewType.ALL, max_results=100)
    assert not [r.info.run_id for r in every if r.info.status == "RUNNING"]
    # The runs of trials the snapshot never saw were superseded by their reruns: deleted, tagged, not RUNNING.
    superseded = [r for r in every if r.info.lifecycle_stage == "deleted"]
    assert superseded and all("fairskin.superseded" in r.data.tags for r in superseded)
    assert {r.info.run_id for r in superseded} <= {e["run_id"] for e in killed_map.values()}


def test_a_study_shows_one_bar_of_ended_trials_and_leaves_tunes_tables_to_verbose():
    """Review of issue 16: with progress on, Tune printed its configuration box, a trial table every 30 s and a
    result box per trial on the demo's console; the engine's bar counts ended trials (restored ones too) instead."""
    import pickle
    from types import SimpleNamespace

    from fairskin.tune.progress import StudyProgress, tune_verbosity

    assert tune_verbosity(progress=True, verbose=False) == 0 and tune_verbosity(progress=True, verbose=True) == 1
    assert tune_verbosity(progress=False, verbose=True) == 0
    bar = StudyProgress(total=4, description="tune test")
    trials = [SimpleNamespace(status=s) for s in ("TERMINATED", "ERROR", "RUNNING", "PENDING")]
    bar.on_step_end(iteration=1, trials=trials)
    assert (bar.ended, bar.failed, bar.running) == (2, 1, 1) and bar._progress is not None
    restored = pickle.loads(pickle.dumps(bar))  # Tune keeps callbacks in trials/tuner.pkl
    assert restored._progress is None and restored.total == 4
    bar.on_experiment_end(trials=[SimpleNamespace(status="TERMINATED")] * 4)
    assert bar.ended == 4 and bar._progress is None
