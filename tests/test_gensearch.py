"""Generator studies (issue 17): a Tune trial fine-tunes a generator and scores its pool by fidelity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, link_smoke_job_stores
from faults import FailOnceAt
from mlflow import MlflowClient
from study_cli import finished_trials, signal_when

from fairskin.config import DiffusionConfig, VariantSpec, build_config
from fairskin.tracking import PARENT_TAG
from fairskin.tune.spaces import SpaceError, load_space, parse_space, resolve_space, variant_from_trial


def _space(**changes) -> dict:
    data = load_space("cbdm_strength").model_dump(mode="json")
    data.update(changes)
    return data


# --------------------------------------------------------------------------- no Ray


@pytest.mark.parametrize(
    "change, field",
    [
        ({"name": "diffusion.cbdm_tau", "kind": "float", "low": -0.5, "high": 1.0}, "diffusion.cbdm_tau"),
        ({"name": "variant.weights", "kind": "choice", "values": ["none", "inverse"]}, "variant.weights"),
        ({"name": "diffusion.learning_rate", "kind": "float", "low": 0.0, "high": 1e-3}, "diffusion.learning_rate"),
    ],
)
def test_invalid_generator_value_fails_before_any_trial_naming_the_field(change, field):
    data = _space()
    data["parameters"] = [change if p["name"] == change["name"] else p for p in data["parameters"]]
    with pytest.raises(SpaceError, match=f"parameter '{field}'"):
        resolve_space(parse_space(data), build_config("smoke"), {}, {})


def test_generator_space_shape_is_checked():
    with pytest.raises(SpaceError, match="trainable: generator"):
        parse_space(_space(trainable="classifier", objectives=[{"metric": "val_accuracy"}]))
    with pytest.raises(SpaceError, match="unknown target"):
        parse_space(_space(parameters=[{"name": "diffusion.ema_decay", "kind": "float", "low": 0.1, "high": 0.2}]))
    resolved = resolve_space(load_space("cbdm_strength"), build_config("smoke"), {}, {})
    assert resolved.trainable == "generator" and resolved.dim("diffusion.max_steps").high == 6  # smoke's steps
    assert resolved.metrics == ("skin_tone_agreement_worst_group", "disease_fidelity_worst_group", "fid_var_group")


def test_trial_settings_become_a_valid_custom_variant():
    trial = {
        "diffusion.cbdm_tau": 0.05,
        "diffusion.cbdm_gamma": 0.1,
        "variant.weights": "sqrs",
        "diffusion.learning_rate": 3e-4,
        "diffusion.max_steps": 5,
        "seed": 0,
    }
    spec = variant_from_trial(trial, "cbdm_tau_005", {"loss": "cbdm", "apply": "sampler"})
    entry = spec.model_dump(exclude_none=True)
    assert VariantSpec.model_validate(entry) == spec
    diffusion = build_config(
        "smoke",
        overrides=[f"diffusion.custom_variants={json.dumps([entry])}", "diffusion.variants=[vanilla, cbdm_tau_005]"],
    ).diffusion
    got = diffusion.for_variant(diffusion.variant("cbdm_tau_005"))
    assert (got.learning_rate, got.max_steps, diffusion.variant("cbdm_tau_005").cbdm_tau) == (3e-4, 5, 0.05)
    assert isinstance(got, DiffusionConfig)


def test_confirmation_salts_give_new_generator_seeds():
    from fairskin.diffusion.variants import salted_seed
    from fairskin.tune.confirm import confirm_salts

    salts = confirm_salts([0, 1, 2], 5)
    seeds = [salted_seed(0, s) for s in salts]
    assert len(set(salts)) == 5 and all(s > 0 for s in salts)
    assert len(set(seeds)) == 5 and not set(seeds) & {0, 1, 2}  # never the search's (or a repeat's) seed
    assert confirm_salts([0], 2) == salts[:2]  # deterministic: a resumed study asks for the same salts


def test_generator_confirmation_table_pairs_each_point_with_vanilla_by_seed(tmp_path):
    """The table's figures against numpy/scipy on made-up records: mean and t-interval over the confirm
    seeds, the paired difference with vanilla on the same salt (not the unpaired difference of means
    when a salt is missing on one side), the search-time value, and the reading of the interval."""
    import numpy as np
    from scipy import stats

    from fairskin.tune.confirm import generator_confirmation_table, plot_generator_confirmations

    metrics, modes = ("skin_tone_agreement_worst_group", "disease_fidelity_worst_group"), ("max", "max")
    values = {
        "t1": {1001: (0.50, 0.30), 1002: (0.60, 0.35), 1003: (0.55, 0.40)},
        "vanilla": {1001: (0.40, 0.31), 1002: (0.42, 0.30), 1003: (0.41, 0.29), 1004: (0.9, 0.9)},
    }
    records = [
        {"trial_id": p, "role": "best" if p == "t1" else "reference", "seed": salt, "figures": dict(zip(metrics, v))}
        for p, by in values.items()
        for salt, v in by.items()
    ]
    trials = pd.DataFrame({"trial_id": ["t1", "t2"], metrics[0]: [0.7, 0.1], metrics[1]: [0.5, 0.1]})
    table = generator_confirmation_table(
        records, trials, metrics, modes, {"t1": "tau=0.1"}, {1001: 11, 1002: 12, 1003: 13, 1004: 14}
    )
    assert list(table["point"]) == ["t1", "t1", "vanilla", "vanilla"]
    row = table[(table["point"] == "t1") & (table["metric"] == metrics[0])].iloc[0]
    x = np.array([0.50, 0.60, 0.55])
    low, high = stats.t.interval(0.95, 2, loc=x.mean(), scale=stats.sem(x))
    assert (row["mean"], row["low"], row["high"], row["n"]) == pytest.approx((x.mean(), low, high, 3))
    d = x - np.array([0.40, 0.42, 0.41])  # salt 1004 has no t1 value: not paired
    dlow, dhigh = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    assert (row["diff_vs_vanilla"], row["diff_low"], row["diff_high"]) == pytest.approx((d.mean(), dlow, dhigh))
    assert row["p"] == pytest.approx(stats.ttest_rel(x, [0.40, 0.42, 0.41]).pvalue)
    assert row["search"] == 0.7 and row["vs_vanilla"] == "better" and row["generator_seeds"] == "11 12 13"
    fidelity = table[(table["point"] == "t1") & (table["metric"] == metrics[1])].iloc[0]
    assert fidelity["vs_vanilla"] == "within noise"
    vanilla = table[table["point"] == "vanilla"]
    assert (vanilla["n"] == 4).all() and vanilla["search"].isna().all() and vanilla["diff_vs_vanilla"].isna().all()
    path = plot_generator_confirmations(table, tmp_path / "confirmed_tradeoff.png", "test")
    assert path.stat().st_size > 10_000 and not list(tmp_path.glob(".*tmp*"))


# --------------------------------------------------------------------------- a study

OBJECTIVES = ("skin_tone_agreement_worst_group", "disease_fidelity_worst_group", "fid_var_group")
SMOKE_STUDY = ["tune.generator_pool_per_subclass=2"]  # 2 images per subclass and checkpoint: the cheapest pool


def _reports(max_steps: int, every: int = 3) -> int:
    """Checkpoints (reports) of a trial of ``max_steps`` fine-tune steps: every ``every`` steps and the last
    (smoke: diffusion.checkpoint_every = 3)."""
    return len({*range(every, max_steps + 1, every), max_steps})


@pytest.fixture(scope="module")
def generator_stages(tmp_path_factory, ray_session, smoke_stages):
    """A smoke runs root holding the stages every generator study reads (prepare, base, judge, reference),
    copied from the session's smoke upstream stages (the study's settings are not in their keys: skipped here);
    returns (config, sources)."""
    from fairskin.tune.generator import generator_sources

    root = smoke_stages(tmp_path_factory.mktemp("gensearch") / "runs")
    config = build_config("smoke", overrides=[f"runtime.runs_root={root}", *SMOKE_STUDY, "tune.num_trials=3"])
    return config, generator_sources(config, echo=lambda *_: None)


def _trial_outputs(folder: Path, trial_ids) -> dict[str, dict[str, int]]:
    """trial id -> {file name: mtime (ns)} of each trial's generator folder in the study ``folder`` (a rerun of the
    trial would write them again)."""
    from fairskin.tune.generator import trial_variant_name

    return {
        t: {
            p.name: p.stat().st_mtime_ns
            for p in (folder / "generators" / trial_variant_name(t)).iterdir()
            if p.is_file()
        }
        for t in trial_ids
    }


@pytest.fixture(scope="module")
def generator_cli(generator_stages, tmp_path_factory) -> dict:
    """The module's study (3 trials, one at a time), made as a user would: ``python -m fairskin.tune`` interrupted
    (SIGINT, our own child by its PID) once its first trial has finished, then ``--resume --json`` to the end.
    What the Ctrl-C left (exit code, the run map, the finished trials' output files with their mtimes) and the
    resumed run's JSON summary, for the resume test below; the other tests read the finished study."""
    from fairskin.tune.study import study_name

    config, _ = generator_stages
    root, study = config.runtime.runs_root, study_name("cbdm_strength", None, config.preset)
    cmd = [
        sys.executable,
        "-m",
        "fairskin.tune",
        "--space",
        "cbdm_strength",
        "--preset",
        "smoke",
        f"runtime.runs_root={root}",
        *SMOKE_STUDY,
        "tune.num_trials=3",  # the module's config (generator_stages), so that run_study resumes the same study
        "tune.max_concurrent_trials=1",  # not in the study's record: one at a time, so the Ctrl-C leaves some to run
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    folder = root / "tune" / study
    runs_file = folder / "mlflow_runs.json"
    log = tmp_path_factory.mktemp("gen-cli") / "first.log"
    code = signal_when(cmd, env, log, lambda: bool(finished_trials(runs_file)), signal.SIGINT, "a finished trial", 300)
    first_map = json.loads(runs_file.read_text())
    interrupted = {"code": code, "log": log.read_text()[-3000:], "map": first_map}
    interrupted["outputs"] = _trial_outputs(folder, finished_trials(runs_file))
    resumed = subprocess.run(
        [*cmd, "--resume", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {"interrupted": interrupted, "summary": json.loads(resumed.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def generator_root(generator_stages, generator_cli):
    """The module's stages and its finished 3-trial study (``generator_cli``), as ``run_study`` returns it: resumed
    in this process, with nothing left to run. The module's other tests reuse the stages (skipped, same keys) under
    other study names; the pipeline test reuses the study's best trial."""
    from fairskin.tune.generator_study import run_study

    config, sources = generator_stages
    result = run_study(config, "cbdm_strength", {}, sources.shards, sources=sources, resume=True, echo=lambda *_: None)
    assert result.parent_run_id == generator_cli["summary"]["parent_run_id"]  # the same study, not a new one
    return config, result


def test_smoke_generator_study_three_trials_tracked(generator_root):
    config, result = generator_root
    assert not result.interrupted and len(result.trials) == 3
    assert (result.trials["state"] == "finished").all()
    client = MlflowClient(config.tracking_uri())
    children = client.search_runs([result.experiment_id], f"tags.{PARENT_TAG} = '{result.parent_run_id}'")
    assert len(children) == 3
    for run in children:
        reports = _reports(int(run.data.params["trial.diffusion.max_steps"]))
        for metric in OBJECTIVES:
            assert len(client.get_metric_history(run.info.run_id, metric)) == reports, metric
        assert run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"pool", "generator"}
    # the trial's generator as a custom variant, its pipeline folder and pool under the study folder
    folders = sorted((result.path / "generators").iterdir())
    assert len(folders) == 3
    entry = yaml.safe_load((folders[0] / "variant.yaml").read_text())["diffusion"]["custom_variants"][0]
    VariantSpec.model_validate(entry)
    assert (folders[0] / "pipeline" / "unet").is_dir() and (folders[0] / "pool.npz").is_file()
    assert (result.path / "report" / "tradeoff_by_tau.png").is_file()
    assert (result.path / "report" / "pareto_front.png").is_file()
    parent = {a.path for a in client.list_artifacts(result.parent_run_id, "study")}
    assert {"study/tradeoff_by_tau.png", "study/pareto_front.png", "study/best_variant.yaml"} <= parent
    assert len(result.pareto) >= 1
    # the best trial's variant.yaml, copied to the report: the entry of the best trial, not another one
    best = yaml.safe_load(result.best_variant.read_text())["diffusion"]["custom_variants"][0]
    assert best["name"] == f"trial_{result.best['trial_id']}"
    row = result.trials.set_index("trial_id").loc[result.best["trial_id"]]
    assert best["cbdm_tau"] == pytest.approx(row["diffusion.cbdm_tau"])
    assert best["max_steps"] == int(row["diffusion.max_steps"]) and best["weights"] == row["variant.weights"]


@pytest.mark.ray
def test_generator_trial_failing_after_a_checkpoint_restarts_from_it(generator_stages, tmp_path, monkeypatch):
    """Issue 17: a trial that fails right after its first checkpoint (step 3 of 6; ``tune.max_failures=1``,
    a test-side step hook, tests/faults.py) is retried by Tune from that checkpoint, not from step 0.
    It ends FINISHED; its reports (Tune's result log and its MLflow child run) are the checkpoints at
    steps 3 and 6 once each, with the loss and pool figures of an uninterrupted run of the same trial
    config and seed (a restart from scratch would report step 3 twice, and the step-6 loss would average
    steps 1-6, not 4-6); and its final UNet equals that run's, bit for bit."""
    import dataclasses

    from safetensors.torch import load_file

    from fairskin.tune import generator as gen
    from fairskin.tune.generator_study import run_study
    from fairskin.tune.mlflow_callback import read_run_map
    from fairskin.tune.study import TUNE_DIR

    config0, sources = generator_stages
    config = build_config(
        "smoke",
        overrides=[
            f"runtime.runs_root={config0.runtime.runs_root}",
            *SMOKE_STUDY,
            "tune.num_trials=1",
            "tune.max_failures=1",
        ],
    )
    data = _space()
    data["preset_parameters"] = {"smoke": [{"name": "diffusion.max_steps", "kind": "choice", "values": [6]}]}
    put = gen.put_generator_inputs
    shared = {}

    def put_failing(*args, **kwargs):  # the study's inputs, with the fault armed
        marker = str(tmp_path / "failed_once")
        shared["inputs"] = dataclasses.replace(put(*args, **kwargs), step_hooks=(FailOnceAt(3, marker),))
        return shared["inputs"]

    monkeypatch.setattr(gen, "put_generator_inputs", put_failing)
    result = run_study(
        config, parse_space(data), {}, sources.shards, sources=sources, name="gen-restart", echo=lambda *_: None
    )
    assert not result.interrupted and len(result.trials) == 1
    trial = result.trials.iloc[0]
    assert trial["state"] == "finished", trial.get("error")
    tid, name = trial["trial_id"], gen.trial_variant_name(trial["trial_id"])
    out = result.path / gen.GENERATORS_DIR / name
    assert (tmp_path / "failed_once").read_text() == "failed at step 3"  # the first attempt did fail

    # Tune's result log of the trial: one row per checkpoint, the retry's first report is step 6
    (trial_dir,) = [p for p in (result.path / TUNE_DIR).iterdir() if p.is_dir() and tid in p.name]
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    assert [(r["training_iteration"], r["step"]) for r in rows] == [(1, 3), (2, 6)], rows

    # the same trial config and seed, uninterrupted, in this process on one thread (as the trial's worker)
    straight: list[dict] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen.run_generator_trial(
            read_run_map(result.path)[tid]["config"],
            dataclasses.replace(shared["inputs"], step_hooks=()),
            name,
            lambda metrics, _: straight.append(metrics),
            out=tmp_path / "straight",
        )
    finally:
        torch.set_num_threads(threads)
    assert [m["step"] for m in straight] == [3, 6]

    client = MlflowClient(config.tracking_uri())
    run = client.get_run(trial["run_id"])
    assert run.info.status == "FINISHED"
    for metric in ("step", "loss", *OBJECTIVES):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        assert history == [(i + 1, pytest.approx(m[metric], rel=1e-9)) for i, m in enumerate(straight)], metric

    weights = "pipeline/unet/diffusion_pytorch_model.safetensors"
    resumed, uninterrupted = load_file(out / weights), load_file(tmp_path / "straight" / weights)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    base = load_file(Path(sources.base) / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(resumed[k], base[k]) for k in resumed)  # it did train


def test_generator_study_sigint_then_resume_keeps_finished_trials(generator_root, generator_cli):
    """Issue 17: a generator study is resumable like a classifier study. The CLI interrupted (SIGINT) once a trial
    has finished exits 130; ``--resume`` ends with the planned trials, each with one FINISHED child run under the
    one parent, the finished trials neither rerun (their pool files untouched) nor logged twice, and each
    checkpoint's metrics logged once (the module's study, ``generator_cli``)."""
    from fairskin.tune.generator import trial_variant_name

    config, result = generator_root
    interrupted, summary, planned = generator_cli["interrupted"], generator_cli["summary"], 3
    assert interrupted["code"] == 130, interrupted["log"]
    first_map = interrupted["map"]
    done_first = [t for t, e in first_map.items() if e["state"] == "finished"]
    assert 1 <= len(done_first) < planned, first_map
    assert all({"pool.npz", "variant.yaml", "preview.png"} <= set(o) for o in interrupted["outputs"].values())

    assert summary["trials"] == planned and not summary["interrupted"]
    folder = result.path
    final_map = json.loads((folder / "mlflow_runs.json").read_text())
    assert len(final_map) == planned and {e["state"] for e in final_map.values()} == {"finished"}
    for tid, entry in first_map.items():  # every trial started before the interrupt kept its run
        assert final_map[tid]["run_id"] == entry["run_id"]
    assert _trial_outputs(folder, done_first) == interrupted["outputs"]  # finished trials were not run again
    assert sorted(p.name for p in (folder / "generators").iterdir()) == sorted(map(trial_variant_name, final_map))
    client = MlflowClient(config.tracking_uri())
    experiment = client.get_experiment(summary["experiment_id"])
    parents = client.search_runs([experiment.experiment_id], "tags.`fairskin.kind` = 'tune'")
    parents = [p for p in parents if PARENT_TAG not in p.data.tags]
    assert [p.info.run_id for p in parents] == [summary["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.{PARENT_TAG} = '{summary['parent_run_id']}'")
    assert sorted(c.info.run_id for c in children) == sorted(e["run_id"] for e in final_map.values())
    for c in children:
        assert c.info.status == "FINISHED"
        reports = _reports(int(c.data.params["trial.diffusion.max_steps"]))
        for metric in (*OBJECTIVES, "step"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, metric)]
            assert sorted(steps) == list(range(1, reports + 1)), (c.data.tags["fairskin.trial_id"], metric, steps)
        assert {a.path for a in client.list_artifacts(c.info.run_id)} >= {"pool", "generator"}


# The generator methods that are not built in, through one smoke pipeline: a generator trial made a variant and a
# method from an installed package, beside the two built-in competitors (every pipeline run costs its stages'
# start-up: one run carries both tests' claims).
PLUGIN_METHODS = ["sqrs_in_loss", "lora", "fairdiffusion"]


@pytest.fixture(scope="module")
def custom_pipeline(generator_root, smoke_job, tmp_path_factory):
    """``jobs/full_pipeline.py --config <best trial's variant.yaml>`` with ``diffusion.variants=[vanilla, <best
    trial>, sqrs_in_loss, lora, fairdiffusion]``, ``sqrs_in_loss`` from a tiny package installed beside the engine
    (its ``fairskin.methods`` entry point; tests/test_methods.py). On the study's runs root: prepare, vae, base,
    reference and judge are skipped; vanilla's generator, pool, evaluation and classifier trials come from the
    smoke job's store (same keys), so only the trial's variant and the three methods are fine-tuned, sampled,
    scored and tuned here. Returns (runs root, best trial's variant name, its entry, console output)."""
    from test_methods import _install, _write_plugin

    config, result = generator_root
    root = config.runtime.runs_root
    link_smoke_job_stores(smoke_job[0], root)
    name = f"trial_{result.best['trial_id']}"
    entry = yaml.safe_load(result.best_variant.read_text())["diffusion"]["custom_variants"][0]
    folder = tmp_path_factory.mktemp("plugin")
    env = _install(_write_plugin(folder / "src"), folder / "site")
    out = subprocess.run(
        [
            sys.executable,
            "jobs/full_pipeline.py",
            "--preset",
            "smoke",
            "--config",
            str(result.best_variant),
            f"diffusion.variants=[vanilla, {name}, {', '.join(PLUGIN_METHODS)}]",
            # In the pipeline's process: the four fits end with the weights Ray Train gives (tests/test_finetune.py)
            # and save about 25 s of CPU each; the plug-in's method is a spec the driver resolves, and the built-in
            # methods' hooks on Ray Train workers are tests/test_method_hooks.py's subject.
            "diffusion.trainer=in_process",
            "generation.executor=in_process",  # the same pools as an actor's (tests/test_generate.py)
            f"runtime.runs_root={root}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-6000:]
    return root, name, entry, out.stdout


@pytest.mark.ray
def test_best_generator_trial_as_custom_variant_runs_through_the_pipeline_into_the_report(
    generator_root, custom_pipeline
):
    """Issue 17's acceptance: the best trial's ``report/best_variant.yaml`` (written from its ``variant.yaml``),
    given to ``jobs/full_pipeline.py --config`` with its name in ``diffusion.variants``, is fine-tuned with the
    trial's settings, gets a pool, and appears in Table 1 (every downstream mode) and in the paired-difference
    table against vanilla (``custom_pipeline``)."""
    config, result = generator_root
    root, name, entry, stdout = custom_pipeline
    for stage in ("prepare", "reference", "base", "judge"):
        assert f"[{stage}] skipped (already done)" in stdout, stage
    stages = root / "stages"
    (finetune,) = stages.glob("finetune-*")
    fitted = sorted(p.name for p in finetune.iterdir() if (p / "pipeline").is_dir())
    assert fitted == sorted(["vanilla", name, *PLUGIN_METHODS])
    summary = json.loads((finetune / "_stage.json").read_text())["summary"]
    assert summary[f"{name}_steps"] == entry["max_steps"]
    assert summary["generators_fitted"] == 1 + len(PLUGIN_METHODS)  # vanilla's came from the store
    client = MlflowClient(config.tracking_uri())
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`fairskin.stage` = 'finetune' and tags.`fairskin.variant` = '{name}'",
    )
    for field in ("cbdm_tau", "cbdm_gamma", "learning_rate", "max_steps", "weights", "loss", "apply"):
        assert run.data.params[f"variant.{field}"] == str(entry[field]), field
    # The same settings, seed (repeat_seeds[0], no salt) and step code: the pipeline's fine-tune of the variant is
    # the trial's generator (fitted in a Tune trial's process), weight for weight (both on one thread).
    from safetensors.torch import load_file

    weights = "pipeline/unet/diffusion_pytorch_model.safetensors"
    ours = load_file(finetune / name / weights)
    trial = load_file(result.path / "generators" / name / weights)
    assert ours.keys() == trial.keys() and all(torch.equal(ours[k], trial[k]) for k in ours)
    (generate,) = stages.glob("generate-*")
    assert (generate / name / "index.json").is_file()
    (report,) = stages.glob("report-*")
    table1 = pd.read_csv(report / "table1.csv")
    assert sorted(table1.loc[table1["variant"] == name, "mode"]) == ["random", "resample", "reweight"]
    assert table1.loc[table1["variant"] == name, "accuracy"].between(0, 1).all()
    paired = pd.read_csv(report / "delta_vs_vanilla.csv")
    mine = paired[paired["variant"] == name]
    assert set(mine["block"]) == {"random", "resample", "reweight", "generation"}, paired[["variant", "block"]]
    assert {"accuracy", "essp_fairseg", "fid", "disease_fidelity"} <= set(mine["metric"])
    assert set(paired["variant"]) == {name, *PLUGIN_METHODS}  # the baseline is not compared with itself
    markdown = (report / "report.md").read_text()
    assert name in markdown.split("## Table 1", 1)[1]


@pytest.mark.ray
def test_an_installed_packages_method_runs_through_the_pipeline_to_the_report(generator_root, custom_pipeline):
    """Issue 28: a method from a package installed beside the engine (its ``fairskin.methods`` entry point) runs
    through the smoke pipeline: its rows, and the two built-in competitors' (issue 29), are in Table 1 and in
    ``delta_vs_vanilla``. LoRA's result is diffusers' adapter file beside a base pipeline that diffusers loads;
    FairDiffusion's sigma per group was logged at every step and drawn (``custom_pipeline``: the generator-trial
    pipeline run carries these methods too)."""
    from fairskin.config import ConfigError

    with pytest.raises(ConfigError, match="unknown variant"):  # not installed in this process
        build_config("smoke", overrides=["diffusion.variants=[vanilla,sqrs_in_loss]"])
    config, _ = generator_root
    root, name, _, stdout = custom_pipeline
    for stage in ("prepare", "vae", "base", "reference", "judge"):
        assert f"[{stage}] skipped (already done)" in stdout, stage
    (finetune,) = (root / "stages").glob("finetune-*")
    assert (finetune / "sqrs_in_loss" / "pipeline" / "unet").is_dir()  # fine-tuned as a generator of its own
    (report,) = (root / "stages").glob("report-*")
    table1 = pd.read_csv(report / "table1.csv")
    assert set(table1["variant"]) == {"vanilla", name, *PLUGIN_METHODS}
    paired = pd.read_csv(report / "delta_vs_vanilla.csv")
    for variant in PLUGIN_METHODS:
        assert len(paired[paired["variant"] == variant]) > 0, variant

    from diffusers import StableDiffusionPipeline

    lora = finetune / "lora" / "pipeline"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(lora, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(lora)  # diffusers' own loader reads the engine's result
    base_unet = root / "stages" / next(p.name for p in (root / "stages").glob("base-*"))
    assert (lora / "unet").is_dir() and base_unet.is_dir()
    assert (finetune / "fairdiffusion" / "method_state.png").stat().st_size > 0
    client = MlflowClient(config.tracking_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, filter_string="tags.mlflow.runName = 'finetune-fairdiffusion'")
    sigma = [k for k in run.data.metrics if k.startswith("fairdiffusion_sigma_")]
    smoke = build_config("smoke")
    assert len(sigma) == len(smoke.data.group_names)
    assert len(client.get_metric_history(run.info.run_id, sigma[0])) == smoke.diffusion.max_steps


@pytest.mark.ray
def test_generator_confirmations_under_new_seeds_paired_with_vanilla_and_resumed(generator_root):
    """Issue 17: with ``tune.confirm_seeds=2`` a finished generator study (the module's, resumed) re-fine-tunes
    its best trial, its Pareto points and vanilla under 2 new generator seeds each. confirm/confirmed.csv holds
    every chosen point and vanilla with n = 2, finite intervals and (points) a paired difference from vanilla;
    the confirmation seeds are not the search's (their pools differ from the trial's pool and from each other);
    each job is one FINISHED MLflow child of the study's parent tagged confirm; a second call redoes nothing."""
    import numpy as np

    from fairskin.tune.generator import generator_sources, trial_variant_name
    from fairskin.tune.generator_study import run_study

    config0, result = generator_root
    root = config0.runtime.runs_root
    config = build_config(
        "smoke", overrides=[f"runtime.runs_root={root}", *SMOKE_STUDY, "tune.num_trials=3", "tune.confirm_seeds=2"]
    )
    sources = generator_sources(config, echo=lambda *_: None)  # stages skipped: done by the fixture
    first = run_study(config, "cbdm_strength", {}, sources.shards, sources=sources, resume=True, echo=lambda *_: None)
    assert not first.interrupted and first.parent_run_id == result.parent_run_id
    folder = result.path / "confirm"
    table = pd.read_csv(folder / "confirmed.csv")
    chosen = {result.best["trial_id"], *result.pareto["trial_id"]}  # continuous tau: every setting distinct
    assert set(table["point"]) == chosen | {"vanilla"}
    assert len(table) == len(chosen | {"vanilla"}) * len(OBJECTIVES) and set(table["metric"]) == set(OBJECTIVES)
    assert (table["n"] == 2).all()
    # an interval wherever the two seeds' values differ; where they are equal (a saturated metric) none, said why
    note = table["note"].fillna("")
    bounded = np.isfinite(table[["low", "high"]].to_numpy(float)).all(axis=1)
    assert np.isfinite(table["mean"]).all() and (bounded | note.str.startswith("no spread")).all() and bounded.any()
    points = table[table["point"] != "vanilla"]
    differs = np.isfinite(points[["diff_low", "diff_high"]].to_numpy(float)).all(axis=1)
    assert np.isfinite(points["diff_vs_vanilla"]).all()
    assert (differs | points["note"].fillna("").str.contains("no spread")).all()
    assert table.loc[table["point"] == "vanilla", "diff_vs_vanilla"].isna().all()
    best = table[(table["point"] == result.best["trial_id"]) & (table["metric"] == OBJECTIVES[0])].iloc[0]
    assert best["search"] == pytest.approx(result.best[OBJECTIVES[0]])
    assert (folder / "confirmed_tradeoff.png").stat().st_size > 10_000

    records = json.loads((folder / "results.json").read_text())
    assert len(records) == 2 * len(chosen | {"vanilla"})
    search_seed = config.diffusion.repeat_seeds[0]
    seeds = {r["params"]["generator_seed"] for r in records}
    assert len(seeds) == 2 and search_seed not in seeds, seeds  # new generator seeds, not the search's
    assert {r["params"]["search_seed"] for r in records} == {search_seed}
    # paired by seed: the csv's difference is the mean of the per-seed differences of the records
    by = {(r["trial_id"], r["seed"]): r["figures"][OBJECTIVES[1]] for r in records}
    salts = sorted({r["seed"] for r in records})
    tid = result.best["trial_id"]
    row = table[(table["point"] == tid) & (table["metric"] == OBJECTIVES[1])].iloc[0]
    assert row["diff_vs_vanilla"] == pytest.approx(np.mean([by[tid, s] - by["vanilla", s] for s in salts]))
    # the seeds really changed: the confirmation pools of the best trial differ from its search pool and each other
    trial_pool = np.load(result.path / "generators" / trial_variant_name(tid) / "pool.npz")["pixels"]
    pools = [
        np.load(folder / "generators" / f"{trial_variant_name(tid)}_salt{s}" / "pool.npz")["pixels"] for s in salts
    ]
    assert all(p.shape == trial_pool.shape for p in pools)  # same P as the search (2 per subclass)
    assert not np.array_equal(pools[0], trial_pool) and not np.array_equal(pools[1], trial_pool)
    assert not np.array_equal(pools[0], pools[1])
    entry = yaml.safe_load(
        (folder / "generators" / f"{trial_variant_name(tid)}_salt{salts[0]}" / "variant.yaml").read_text()
    )["diffusion"]["custom_variants"][0]
    assert entry["seed_salt"] == salts[0] and entry["loss"] == "cbdm"  # the pipeline would train it under that seed
    vanilla_entry = yaml.safe_load((folder / "generators" / f"vanilla_salt{salts[0]}" / "variant.yaml").read_text())[
        "diffusion"
    ]["custom_variants"][0]
    assert (vanilla_entry["loss"], vanilla_entry["weights"]) == ("dm", "none")

    client = MlflowClient(config.tracking_uri())
    confirm_runs = client.search_runs(
        [result.experiment_id], f"tags.{PARENT_TAG} = '{result.parent_run_id}' and tags.`fairskin.kind` = 'confirm'"
    )
    assert sorted(r.info.run_id for r in confirm_runs) == sorted(r["run_id"] for r in records)
    assert {r.info.status for r in confirm_runs} == {"FINISHED"}
    for run in confirm_runs:
        assert int(run.data.params["confirm.generator_seed"]) in seeds
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"pool", "generator"}
    parent = {a.path for a in client.list_artifacts(result.parent_run_id, "confirm")}
    assert {"confirm/confirmed.csv", "confirm/confirmed_tradeoff.png"} <= parent

    # resume: nothing is re-fine-tuned or logged again
    stamps = {
        p: p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.suffix != ".csv" and p.name != "confirmed_tradeoff.png"
    }
    again = run_study(config, "cbdm_strength", {}, sources.shards, sources=sources, resume=True, echo=lambda *_: None)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((folder / "results.json").read_text()) == records
    after = client.search_runs(
        [result.experiment_id], f"tags.{PARENT_TAG} = '{result.parent_run_id}' and tags.`fairskin.kind` = 'confirm'"
    )
    assert sorted(r.info.run_id for r in after) == sorted(r["run_id"] for r in records)
    pd.testing.assert_frame_equal(again.confirmed.reset_index(drop=True), first.confirmed.reset_index(drop=True))


def test_generator_confirmation_p_values_are_holm_adjusted_over_the_points_per_objective():
    """Each point's paired p-value against vanilla, Holm-adjusted over the confirmed points of the same
    objective (a study confirms its best and its Pareto points: several comparisons with one vanilla)."""
    from scipy import stats

    from fairskin.tune.confirm import generator_confirmation_table

    metrics, modes = ("skin_tone_agreement_worst_group", "fid_var_group"), ("max", "min")
    values = {
        "t1": {1: (0.50, 10.0), 2: (0.60, 12.0), 3: (0.55, 9.0)},
        "t2": {1: (0.45, 30.0), 2: (0.40, 20.0), 3: (0.47, 26.0)},
        "t3": {1: (0.30, 15.0), 2: (0.50, 15.5), 3: (0.42, 13.0)},
        "vanilla": {1: (0.40, 14.0), 2: (0.42, 15.0), 3: (0.41, 13.5)},
    }
    records = [
        {
            "trial_id": p,
            "role": "reference" if p == "vanilla" else "pareto",
            "seed": salt,
            "figures": dict(zip(metrics, v)),
        }
        for p, by in values.items()
        for salt, v in by.items()
    ]
    table = generator_confirmation_table(records, pd.DataFrame({"trial_id": []}), metrics, modes, {}, {})
    for k, metric in enumerate(metrics):
        rows = table[(table["metric"] == metric) & (table["point"] != "vanilla")].set_index("point")
        raw = {
            p: stats.ttest_rel(
                [values[p][s][k] for s in (1, 2, 3)], [values["vanilla"][s][k] for s in (1, 2, 3)]
            ).pvalue
            for p in ("t1", "t2", "t3")
        }
        assert rows["p"].to_dict() == pytest.approx(raw)
        ranked = sorted(raw, key=raw.get)  # Holm by hand: (m - i) p_(i), running maximum, capped at 1
        expected, running = {}, 0.0
        for i, p in enumerate(ranked):
            running = max(running, min(1.0, (3 - i) * raw[p]))
            expected[p] = running
        assert rows["p_holm"].to_dict() == pytest.approx(expected)
        smallest = min(raw, key=raw.get)
        assert rows.loc[smallest, "p_holm"] == pytest.approx(min(1.0, 3 * raw[smallest]))
    assert table.loc[table["point"] == "vanilla", "p_holm"].isna().all()
