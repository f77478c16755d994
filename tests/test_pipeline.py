"""The pipeline at smoke size: `prepare` alone (skip, force, tracking), then every stage through the job
entry point, the report rebuilt from MLflow alone, and the same job under `ray job submit`."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from mlflow import MlflowClient

from fairskin.config import ConfigError, build_config
from fairskin.data.prepare import reference_counts
from fairskin.data.shards import load_decoded, read_index
from fairskin.data.synthetic import scaled_counts
from fairskin.pipeline import run_pipeline
from fairskin.pipeline.stages.generate import check_pool_size
from fairskin.tracking import PARENT_TAG


def test_prepare_writes_manifest_shards_and_counts(prepared_smoke):
    config, prepare = prepared_smoke
    manifest = pd.read_parquet(prepare.path / "manifest.parquet")
    expected = scaled_counts(reference_counts(), config.data.synthetic_scale, config.data.min_subclass_count)
    assert manifest.groupby(["group", "disease"]).size().to_dict() == expected
    pixels, meta = load_decoded(prepare.path / "shards")
    assert pixels.shape[1:] == (32, 32, 3) and len(meta) == len(manifest) == read_index(prepare.path / "shards")["rows"]
    assert list(meta["id"]) == list(manifest["id"]) and list(meta["sha256"]) == list(manifest["sha256"])
    assert set(manifest["source"]) == {"synthetic"} and manifest["seed"].notna().all()
    for name in ("subclass_counts.csv", "subclass_counts.png", "preview.png", "_stage.json"):
        assert (prepare.path / name).is_file()


def test_same_config_same_data_other_seed_other_data(prepared_smoke, tmp_path):
    config, prepare = prepared_smoke
    again = run_pipeline(
        build_config("smoke", overrides=[f"runtime.runs_root={tmp_path}/a"]), ["prepare"], echo=lambda *_: None
    ).results["prepare"]
    other = run_pipeline(
        build_config("smoke", overrides=[f"runtime.runs_root={tmp_path}/b", "runtime.seed=1"]),
        ["prepare"],
        echo=lambda *_: None,
    ).results["prepare"]
    m0, m1, m2 = (pd.read_parquet(r.path / "manifest.parquet") for r in (prepare, again, other))
    assert again.key == prepare.key and m0.equals(m1)  # same split, same pixels (sha256), same ids
    assert other.key != prepare.key and not np.array_equal(m0["sha256"], m2["sha256"])


def test_pipeline_logs_parent_and_child_runs_and_skips_when_done(smoke_config):
    first = run_pipeline(smoke_config, ["prepare"], echo=lambda *_: None)
    second = run_pipeline(smoke_config, ["prepare"], echo=lambda *_: None)
    forced = run_pipeline(smoke_config, ["prepare"], force=["prepare"], echo=lambda *_: None)
    assert not first.results["prepare"].skipped and second.results["prepare"].skipped
    assert not forced.results["prepare"].skipped and forced.results["prepare"].path == first.results["prepare"].path
    client = MlflowClient(first.tracker.tracking_uri)
    for outcome, skipped in ((first, "False"), (second, "True")):
        children = client.search_runs([outcome.tracker.experiment_id], f"tags.{PARENT_TAG} = '{outcome.parent_run_id}'")
        assert [c.info.run_name for c in children] == ["prepare"]
        assert children[0].data.tags["fairskin.skipped"] == skipped
    child = client.search_runs([first.tracker.experiment_id], f"tags.{PARENT_TAG} = '{first.parent_run_id}'")[0]
    assert child.data.metrics["rows"] > 0 and child.data.params["reads.data.image_size"] == "32"
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "prepare")]
    assert "prepare/subclass_counts.png" in artifacts and "prepare/preview.png" in artifacts
    parent = client.get_run(first.parent_run_id)
    assert parent.data.params["preset"] == "smoke" and parent.info.status == "FINISHED"


def test_pool_size_is_checked_against_the_tune_space_before_generating(prepared_smoke):
    config, prepare = prepared_smoke
    shards = prepare.path / "shards"
    check_pool_size(config, shards)  # smoke's P fits its ablation plan
    # The ablation plan puts 0.5 of 7,500 x 0.01 = 75 images on Caucasian: 7.5 per disease.
    small = config.model_copy(update={"generation": config.generation.model_copy(update={"images_per_subclass": 7})})
    with pytest.raises(ConfigError, match=r"generation.images_per_subclass = 7 .*'ablation'.*fixed.plan"):
        check_pool_size(small, shards)
    # The pipeline checks it right after `prepare`, before the long stages in between.
    seen = []
    with pytest.raises(ConfigError, match="generation.images_per_subclass"):
        run_pipeline(small, ["generate"], echo=seen.append)
    assert [line for line in seen if line.endswith("...")] == ["[prepare] ..."]


def test_job_stages_option_takes_overrides_after_it_and_refuses_unknown_stages(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "jobs/full_pipeline.py",
            "--preset",
            "smoke",
            "--stages",
            "prepare",
            f"runtime.runs_root={tmp_path / 'runs'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert list((tmp_path / "runs" / "stages").glob("prepare-*/manifest.parquet"))
    assert "reference" not in ok.stdout
    bad = subprocess.run(
        [sys.executable, "jobs/full_pipeline.py", "--stages", "evalute"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown stage 'evalute'" in bad.stderr and "evaluate" in bad.stderr


@pytest.mark.parametrize("script", ["jobs/full_pipeline.py", "jobs/ablation.py"])
def test_job_run_by_an_interpreter_without_the_engine_says_which_and_how_to_fix_it(script):
    """Issue 16.4: `ray job submit ... -- python jobs/...` on a head started without the venv active ran the system
    python and died in an import (`No module named 'mlflow'`). `-S` hides the venv's site-packages the same way."""
    out = subprocess.run(
        [sys.executable, "-S", script, "--preset", "smoke"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr[-2000:]
    message = " ".join(out.stderr.split())
    assert "Traceback" not in message and message.startswith("error: ")
    assert sys.executable in message and "mlflow" in message and script in message
    assert "activate the venv before `ray start`" in message and "$PWD/.venv/bin/python" in message


SUMMARY = re.compile(r"^(runs root|  \w+ |total|Ray logs|report|MLflow URI|MLflow UI|runs) *[ :]")


def console_problems(output: str) -> list[str]:
    """What keeps a job's console from being quiet: Ray worker lines, Ray's `E` log lines, Ray Data's and the
    libraries' progress bars, anything after the summary (which must come last)."""
    lines = output.rstrip("\n").splitlines()
    problems = [
        f"Ray/library noise: {line[:160]}"
        for line in lines
        if re.search(
            r"\(\w+ pid=\d+\)|core_worker\.cc| E \d+ \d+\]|progress UI|Progress bars disabled"
            r"|Loading weights|Writing model shards|it/s\]|INFO mlflow",
            line,
        )
    ]
    starts = [i for i, line in enumerate(lines) if line.startswith("runs root      :")]
    if not starts:
        return problems + ["no summary"]
    tail = lines[starts[-1] :]
    problems += [
        f"not a summary line after the summary began: {line[:160]}" for line in tail if not SUMMARY.match(line)
    ]
    if len(tail) < 8 or not tail[-1].startswith("runs           :"):
        problems.append(f"the summary is not last: {tail[-3:]}")
    return problems


def test_job_entry_point_runs_every_stage_and_reports_where_things_are(smoke_job, tmp_path):
    root, stdout = smoke_job
    assert f"sqlite:///{root / 'mlflow.db'}" in stdout
    assert "mlflow server" in stdout and "#/experiments/" in stdout and "report         :" in stdout
    stages = root / "stages"
    config = build_config("smoke")
    pools = sorted(stages.glob("generate-*/*/index.json"))
    assert [p.parent.name for p in pools] == sorted(config.diffusion.variants)
    per_pool = config.generation.images_per_subclass * 15
    assert all(read_index(p.parent)["rows"] == per_pool for p in pools)
    (evaluate,) = stages.glob("evaluate-*")
    table = pd.read_csv(evaluate / "generation_table.csv")
    assert sorted(table["variant"]) == sorted(config.diffusion.variants)
    assert np.isfinite(table[["fid_mean", "kid_mean", "fid_var_subclass", "is_mean"]].to_numpy()).all()
    per_subclass = pd.read_csv(evaluate / "per_subclass.csv")
    assert len(per_subclass) == 15 * len(config.diffusion.variants) and (per_subclass["fid"] >= 0).all()
    for variant in config.diffusion.variants:
        assert (evaluate / variant / "tsne.png").stat().st_size > 0
        assert (evaluate / variant / "fid_heatmap.png").stat().st_size > 0
        assert (evaluate / variant / "skin_tone_heatmap.png").stat().st_size > 0
        assert (evaluate / variant / "disease_fidelity_heatmap.png").stat().st_size > 0
        confusion = pd.read_csv(evaluate / variant / "skin_tone_confusion.csv", index_col=0)
        assert confusion.to_numpy().sum() == per_pool  # every pool image assigned to one group
    # Skin-tone fidelity per pool, beside the same rule's ceiling on held-out real images.
    tone = table[["skin_tone_agreement", "skin_tone_agreement_worst_group", "skin_tone_agreement_ceiling"]]
    assert ((tone >= 0) & (tone <= 1)).all().all() and (table["skin_tone_agreement_ceiling"] > 0.5).all()
    # The judge: trained on a fresh procedural set that shares no image with the prepare stage; disease
    # fidelity, real-vs-real floors and pooled FIDs in the table and in each variant's MLflow run.
    (judge,) = stages.glob("judge-*")
    trained = pd.read_csv(judge / "judge_ids.csv")
    (prepare,) = stages.glob("prepare-*")
    assert len(trained) == 15 * config.generation.judge_images_per_subclass
    assert not set(trained["id"]) & set(pd.read_parquet(prepare / "manifest.parquet")["id"])
    keys = [
        "disease_fidelity",
        "judge_accuracy_generated",
        "judge_accuracy_real",
        "disease_fidelity_worst_group",
        "kid_floor_mean",
        "fid_floor_mean",
        "fid_var_subclass_floor_corrected",
        "fid_pooled_overall",
        *[f"disease_fidelity_{g}" for g in config.data.group_names],
        *[f"fid_pooled_{g}" for g in config.data.group_names],
    ]
    assert np.isfinite(table[keys].to_numpy(float)).all(), table[keys]
    assert (table["judge_saw_train_images"] == 0).all() and table["feature_extractor"].str.contains("judge").all()
    assert {"fid_floor", "kid_floor", "floor_method", "disease_fidelity"} <= set(per_subclass.columns)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = [
        r
        for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "tags.`fairskin.stage` = 'evaluate'"
        )
        if "fairskin.variant" in r.data.tags
    ]
    assert runs and all(k in r.data.metrics for r in runs for k in keys)
    assert all("never saw the real images" in r.data.tags["fairskin.judge"] for r in runs)
    # The ablation grid: variants x 3 downstream modes, one training seed at smoke.
    (tune,) = stages.glob("tune-*")
    trials = pd.read_csv(tune / "trials.csv")
    assert len(trials) == 3 * len(config.diffusion.variants) and (trials["state"] == "finished").all()
    (report,) = stages.glob("report-*")
    table1 = pd.read_csv(report / "table1.csv")
    assert len(table1) == len(trials) and table1["accuracy"].between(0, 1).all()
    assert sorted(table1.groupby("variant")["mode"].apply(sorted).to_dict().items()) == [
        (variant, ["random", "resample", "reweight"]) for variant in sorted(config.diffusion.variants)
    ]
    markdown = (report / "report.md").read_text()
    assert "## Table 1" in markdown and "## Table 2: FID per group" in markdown
    assert "disease fidelity" in markdown and "pooled overall" in markdown and "never saw the real images" in markdown
    assert "missing: no finished trials of an `aug_count` study" in markdown  # reported missing, not filled in

    bad = subprocess.run(
        [sys.executable, "jobs/full_pipeline.py", "--preset", "smoke", "data.image_size=tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "data.image_size" in bad.stderr and '"tiny"' in bad.stderr


def test_job_console_is_quiet_and_ends_with_the_summary(smoke_job):
    """Issue 16.7: no Ray worker lines (PreemptionWatcher `E ... core_worker.cc`, Train/Data chatter), no Ray Data or
    library progress bars, and the engine's summary printed last (worker output is in the Ray logs it names)."""
    _, output = smoke_job
    assert console_problems(output) == [], output[-4000:]
    assert "Ray logs       : " in output


def test_ablation_report_regenerates_from_mlflow_alone(smoke_job, tmp_path):
    root, _ = smoke_job
    only_store = tmp_path / "runs"
    only_store.mkdir()
    shutil.copy(root / "mlflow.db", only_store / "mlflow.db")  # no stage folders, no Tune folders
    out = subprocess.run(
        [sys.executable, "jobs/ablation.py", "--preset", "smoke", f"runtime.runs_root={only_store}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (study_dir,) = (only_store / "report").iterdir()
    rebuilt = pd.read_csv(study_dir / "table1.csv")
    (original,) = (root / "stages").glob("report-*")
    pd.testing.assert_frame_equal(rebuilt, pd.read_csv(original / "table1.csv"))
    assert "missing figure3b_augmentation_count" in out.stdout


def _submit(
    ray_head, env: dict, submission: str, runtime_env: dict, *entrypoint: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    ray_bin = Path(sys.executable).with_name("ray")
    return subprocess.run(
        [
            str(ray_bin),
            "job",
            "submit",
            "--address",
            ray_head["dashboard"],
            "--submission-id",
            submission,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            *entrypoint,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _without_token(tmp_path: Path, **extra: str) -> dict:
    """The environment of a user who has no token: no RAY_AUTH_* variables and a HOME without ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    return {**env, "HOME": str(tmp_path), **extra}


def test_session_head_keeps_token_authentication_on(ray_head, tmp_path):
    """Issue 16.2: the session's head runs with Ray's token authentication: a job without the token (or with another
    one) is refused before it starts."""
    excludes = {"excludes": [".venv", "runs", ".git", "*.db", "tests"]}
    entry = (sys.executable, "-c", "print('ran')")
    for name, env in (
        ("none", _without_token(tmp_path)),
        ("wrong", _without_token(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)),
    ):
        refused = _submit(ray_head, env, f"fairskin-refused-{name}-{os.getpid()}", excludes, *entry, timeout=120)
        assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr, (
            refused.stdout[-1000:] + refused.stderr[-1000:]
        )
    from ray.job_submission import JobSubmissionClient

    submitted = [j.submission_id for j in JobSubmissionClient(ray_head["dashboard"]).list_jobs()]  # with the token
    assert not [s for s in submitted if s and s.startswith("fairskin-refused-")]


def test_ray_job_submit_runs_the_pipeline_against_the_session_head(smoke_job, ray_head):
    """The README's job recipe against a token-protected head: the token (inherited from this session's environment,
    as a user's shell holds it) lets the job in, and the commit named at submission is recorded on the job's
    pipeline run (the upload has no .git)."""
    root, _ = smoke_job
    submission = f"fairskin-test-{os.getpid()}"
    commit = f"test-commit-{os.getpid()}"
    runtime_env = {"env_vars": {"FAIRSKIN_GIT_COMMIT": commit}, "excludes": [".venv", "runs", ".git", "*.db"]}
    out = _submit(
        ray_head,
        dict(os.environ),
        submission,
        runtime_env,
        sys.executable,
        "jobs/full_pipeline.py",
        "--preset",
        "smoke",
        f"runtime.runs_root={root}",
    )
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head["dashboard"])
    logs = client.get_job_logs(submission)
    assert client.get_job_status(submission) == JobStatus.SUCCEEDED, out.stderr[-2000:] + logs[-3000:]
    # Every stage was already done by the earlier run under the same runs root: all skipped.
    for stage in (
        "prepare",
        "reference",
        "vae",
        "base",
        "control_base",
        "finetune",
        "generate",
        "judge",
        "evaluate",
        "tune",
        "report",
    ):
        assert f"[{stage}] skipped (already done)" in logs
    assert "report.md" in logs and list((root / "stages").glob("report-*/report.md"))
    tracking = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = tracking.search_runs(
        [e.experiment_id for e in tracking.search_experiments()], f"tags.`fairskin.git_commit` = '{commit}'"
    )
    assert [r.data.tags["fairskin.kind"] for r in runs] == ["pipeline"]
