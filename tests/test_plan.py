"""The compute planner (fairskin.plan): no Ray, no pipeline, a few seconds.

Each figure is checked against something that could disagree: hand-worked optima, a numerical
optimiser of the continuous problem, a brute-force integer search, a simulation of the nested design
with paired t-tests, README run 6's stage times, and stage records written here with known seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from fairskin.config import build_config
from fairskin.plan import (
    HERE_MODEL,
    MIN_R,
    Components,
    UnitCosts,
    brute_force,
    closed_form,
    design_mde,
    gpu_costs,
    main,
    measured_components,
    measured_costs,
    plan,
    target_variance,
)

REPO = Path(__file__).resolve().parents[1]
Z_05_80 = 1.959964 + 0.841621  # z_{0.975} + z_{0.8}, from tables


# ---------------------------------------------------------------- closed form by hand


def test_equal_costs_and_components_by_hand():
    # P(K, S) = (1 + K + KS)(1 + 1/K + 1/KS) >= (1 + 1 + 1)^2 with equality at K = S = 1;
    # V0 = (0.5 / 2.801585)^2 = 0.0318518, R* = 3 / V0 = 94.187, so 95 repeats at 3 s each.
    R, K, S = closed_form(Components(1, 1, 1), UnitCosts(1, 1, 1), 0.5, 0.05, 0.8)
    assert (K, S) == pytest.approx((1.0, 1.0))
    assert R == pytest.approx(3 / (0.5 / Z_05_80) ** 2, rel=1e-5)
    assert R == pytest.approx(94.187, abs=0.01)
    best = brute_force(Components(1, 1, 1), UnitCosts(1, 1, 1), 0.5, 0.05, 0.8, method="normal")
    assert (best.R, best.K, best.S, best.cost_seconds) == (95, 1, 1, 285)


def test_nested_optimum_by_hand():
    # K* = sqrt(16 / 1 x 4 / 1) = 8, S* = sqrt(1 / 1 x 16 / 4) = 2: costs 16 : 8 : 16 against
    # variances 1 : 4/8 : 16/16, term by term proportional.
    R, K, S = closed_form(Components(1, 4, 16), UnitCosts(16, 1, 1), 0.5, 0.05, 0.8)
    assert (K, S) == pytest.approx((8.0, 2.0))
    assert R == pytest.approx((1 + 4 / 8 + 16 / 16) / (0.5 / Z_05_80) ** 2, rel=1e-5)


def test_zero_pool_component_gives_one_pool():
    # sigma2_pool = 0: K = 1, and the seed level sees a fine-tune costing c_ft + c_pool:
    # S = sqrt((3 + 1) x 4 / (1 x 1)) = 4.
    R, K, S = closed_form(Components(1, 0, 4), UnitCosts(3, 1, 1), 0.5, 0.05, 0.8)
    assert (K, S) == pytest.approx((1.0, 4.0))
    p = plan(Components(1, 0, 4), UnitCosts(3, 1, 1), 0.5, 0.05, 0.8, method="normal")
    assert (p.K, p.S) == (1, 4)


def test_zero_classifier_component_and_generation_endpoint_give_one_seed():
    R, K, S = closed_form(Components(1, 4, 0), UnitCosts(16, 1, 1), 0.5, 0.05, 0.8)
    # S = 1: the pool costs c_pool + c_cls = 2, K = sqrt(16 x 4 / 2) = sqrt(32)
    assert (K, S) == pytest.approx((math.sqrt(32), 1.0))
    p = plan(Components(1, 4, 16), UnitCosts(16, 1, 1), 0.5, 0.05, 0.8, classifier_level=False)
    assert p.S == 1 and p.closed_form["S"] == pytest.approx(1.0)
    assert any("generation endpoint" in n for n in p.notes)


def test_no_fine_tune_component_pins_r_at_the_t_test_minimum():
    # sigma2_ft = 0: more repeats only cost; R = 3 and K solves 1/K + 1/K <= 3 V0 (S = 1 since
    # c_pool = c_cls and sigma2_pool = sigma2_cls): K = 2 / (3 V0).
    R, K, S = closed_form(Components(0, 1, 1), UnitCosts(3, 1, 1), 0.5, 0.05, 0.8)
    assert R == MIN_R
    assert K == pytest.approx(2 / (3 * (0.5 / Z_05_80) ** 2), rel=1e-6) and S == pytest.approx(1.0)


# ---------------------------------------------------------------- closed form against optimisers

SETTINGS = [  # (sigma2_ft, sigma2_pool, sigma2_cls), (c_ft, c_pool, c_cls), mde, alpha
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0.5, 0.05),
    ((1.0, 4.0, 16.0), (16.0, 1.0, 1.0), 0.5, 0.05),
    ((0.002, 0.004, 0.01), (600.0, 60.0, 20.0), 0.02, 0.01),  # interior, K* 4.5, S* 2.7
    ((1.0, 2.0, 0.1), (10.0, 1.0, 5.0), 0.4, 0.01),  # face S = 1
    ((1.0, 0.01, 4.0), (1.0, 10.0, 1.0), 0.6, 0.05),  # face K = 1
    ((4e-4, 9e-4, 2.5e-3), (186.3, 46.0, 96.3), 0.01, 0.01),  # study-preset-like costs
    ((0.0, 1.0, 1.0), (3.0, 1.0, 1.0), 0.5, 0.05),  # R pinned at 3
]


def _continuous_cost(comp, costs, mde, alpha, power=0.8):
    """min over K >= 1, S >= 1 of R(K, S) (c_ft + K (c_pool + S c_cls)) with R(K, S) = max(3, v(K, S) / V0),
    the fewest repeats meeting var_of_mean <= V0: a grid in log K, log S refined by Nelder-Mead."""
    V0 = target_variance(mde, alpha, power)

    def cost(x):
        K, S = np.exp(np.clip(x, 0, 8))
        return max(MIN_R, comp.per_repeat(K, S) / V0) * costs.per_repeat(K, S)

    axis = np.linspace(0, math.log(500), 120)
    start = min(((u, w) for u in axis for w in axis), key=cost)
    res = optimize.minimize(
        cost,
        np.array(start),
        method="Nelder-Mead",
        bounds=[(0, 8), (0, 8)],
        options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 4000},
    )
    return min(res.fun, cost(np.array(start)))


@pytest.mark.parametrize("sig,cost,mde,alpha", SETTINGS)
def test_closed_form_is_the_continuous_optimum(sig, cost, mde, alpha):
    comp, costs = Components(*sig), UnitCosts(*cost)
    R, K, S = closed_form(comp, costs, mde, alpha, 0.8)
    assert R >= MIN_R and K >= 1 and S >= 1
    assert comp.per_repeat(K, S) / R <= target_variance(mde, alpha, 0.8) * (1 + 1e-9)
    assert costs.total(R, K, S) == pytest.approx(_continuous_cost(comp, costs, mde, alpha), rel=1e-4)


@pytest.mark.parametrize("sig,cost,mde,alpha", SETTINGS)
def test_plan_matches_brute_force_under_the_normal_approximation(sig, cost, mde, alpha):
    comp, costs = Components(*sig), UnitCosts(*cost)
    R, K, S = closed_form(comp, costs, mde, alpha, 0.8)
    p = plan(comp, costs, mde, alpha, 0.8, method="normal")
    full = brute_force(comp, costs, mde, alpha, 0.8, max_R=2000, max_K=40, max_S=40, method="normal")
    # (K, S) the rounded closed form or a neighbour, for the planner and for the full search
    for design in (p, full):
        assert abs(design.K - round(K)) <= 1 and abs(design.S - round(S)) <= 1, (design, (R, K, S))
    assert p.cost_seconds <= full.cost_seconds * 1.01
    assert p.cost_seconds >= full.cost_seconds  # the full search cannot lose
    assert full.cost_seconds >= costs.total(R, K, S) * (1 - 1e-9)  # nor beat the continuous optimum
    assert p.mde_achieved <= mde


@pytest.mark.parametrize("sig,cost,mde,alpha", SETTINGS[:4])
def test_exact_plan_close_to_exact_brute_force(sig, cost, mde, alpha):
    comp, costs = Components(*sig), UnitCosts(*cost)
    p = plan(comp, costs, mde, alpha, 0.8)
    full = brute_force(comp, costs, mde, alpha, 0.8, max_R=400)
    normal = plan(comp, costs, mde, alpha, 0.8, method="normal")
    assert full.cost_seconds <= p.cost_seconds <= full.cost_seconds * 1.01
    assert p.R >= normal.R  # the t-test needs at least the z-test's repeats
    assert design_mde(comp, p.R, p.K, p.S, alpha, 0.8) == pytest.approx(p.mde_achieved)
    assert p.mde_achieved <= mde < design_mde(comp, p.R - 1, p.K, p.S, alpha, 0.8)


def test_exact_plan_at_few_repeats_is_the_brute_force_optimum():
    # R near 4 to 9: the t-test's price of few repeats moves the optimum off the normal closed form
    rng = np.random.default_rng(3)
    for _ in range(12):
        comp = Components(*10 ** rng.uniform(-2, 0, 3))
        costs = UnitCosts(*10 ** rng.uniform(0, 2, 3))
        R, _, _ = closed_form(comp, costs, 1.0, 0.01, 0.8)
        mde = math.sqrt(R / rng.uniform(3, 8))
        p = plan(comp, costs, mde, 0.01, 0.8)
        full = brute_force(comp, costs, mde, 0.01, 0.8, max_R=400, max_K=60, max_S=60)
        assert p.cost_seconds <= full.cost_seconds * (1 + 1e-9) and p.mde_achieved <= mde


# ---------------------------------------------------------------- the exact plan, simulated


def test_exact_plan_reaches_its_power_by_simulation():
    comp, costs = Components(0.02, 0.03, 0.05), UnitCosts(50, 10, 5)
    alpha, target = 0.05 / 5, 0.25  # the first Holm level of a family of 5
    p = plan(comp, costs, target, alpha, 0.8)
    assert 5 <= p.R <= 40  # small R, where t and normal differ

    def power(R, n=20_000, seed=0):
        rng = np.random.default_rng(seed)
        K, S = p.K, p.S
        a = rng.normal(0, math.sqrt(comp.sigma2_ft), (n, R))
        b = rng.normal(0, math.sqrt(comp.sigma2_pool), (n, R, K))
        e = rng.normal(0, math.sqrt(comp.sigma2_cls), (n, R, K, S))
        d = target + a + (b + e.mean(axis=3)).mean(axis=2)  # each repeat's averaged paired difference
        p_values = stats.ttest_1samp(d, 0.0, axis=1).pvalue
        return float(np.mean(p_values < alpha))

    se = math.sqrt(0.8 * 0.2 / 20_000)
    assert power(p.R) >= 0.8 - 3 * se
    assert power(p.R - 1, seed=1) < 0.8 + 3 * se  # and R is the smallest that does


# ---------------------------------------------------------------- budget


def test_budget_gives_the_smallest_mde_it_pays_for():
    comp, costs = Components(1, 4, 16), UnitCosts(16, 1, 1)
    p = plan(comp, costs, 0.5, 0.05, 0.8, budget_seconds=2000, method="normal")
    b = p.budget_mde
    assert costs.total(b["R"], b["K"], b["S"]) <= 2000
    # brute force over every design within the budget
    best = min(
        design_mde(comp, R, K, S, 0.05, 0.8, "normal")
        for K in range(1, 21)
        for S in range(1, 21)
        for R in [math.floor(2000 / costs.per_repeat(K, S))]
        if R >= MIN_R
    )
    assert b["mde"] == pytest.approx(best)
    assert b["mde"] > 0.5 and any("over the budget" in n for n in p.notes)  # the target costs more


# ---------------------------------------------------------------- measured costs


def _record(
    root: Path, stage: str, key: str, seconds: float, started: float, summary: dict, reads=None, inputs=None
) -> Path:
    folder = root / "stages" / f"{stage}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_stage.json").write_text(
        json.dumps(
            {
                "key": key,
                "seconds": seconds,
                "stage": stage,
                "started": started,
                "summary": summary,
                "version": 1,
                "reads": reads or {},
                "inputs": inputs or {},
            }
        )
    )
    return folder


def _fake_root(root: Path) -> None:
    """Stage records with round seconds; the expected costs are worked out in the test."""
    _record(
        root,
        "finetune",
        "old",
        999.0,
        100.0,
        {"vanilla_seconds": 999.0},
        reads={"diffusion.max_steps": 6, "diffusion.global_batch_size": 4},
    )
    _record(
        root,
        "finetune",
        "new",
        60.0,
        200.0,
        {
            "vanilla_seconds": 40.0,
            "vanilla-r1_seconds": 40.0,
            "fairskin_s_seconds": 30.0,
            "fairskin_s-r1_seconds": 30.0,
            "vanilla_final_loss": 0.5,
            "generators": 4,
            "repeats": 2,
        },
        reads={"diffusion.max_steps": 6, "diffusion.global_batch_size": 4},
    )
    _record(
        root,
        "finetune",
        "other",
        1000.0,
        250.0,
        {"vanilla_seconds": 1000.0},  # newer, other settings
        reads={"diffusion.max_steps": 12, "diffusion.global_batch_size": 4},
    )
    (root / "stages" / "finetune-partial").mkdir()  # unfinished: no record, ignored
    gen = _record(
        root,
        "generate",
        "g",
        40.0,
        300.0,
        {"generate_seconds": 35.0, "images_generated": 1200},
        reads={"generation.images_per_subclass": 10, "generation.inference_steps": 2, "data.image_size": 32},
    )
    for name in (
        "vanilla",
        "vanilla-r1",
        "fairskin_s",
        "fairskin_s-r1",
        "control_drop_african",
        "control_drop_african-r1",
        "control_mix_african_50",
        "control_mix_african_50-r1",
    ):
        (gen / name).mkdir()
        (gen / name / "index.json").write_text("{}")
    (gen / "not_a_pool").mkdir()
    _record(
        root,
        "evaluate",
        "e",
        16.0,
        400.0,
        {"vanilla_fid_mean": 1.0},
        inputs={"generate": {"key": "g", "path": str(gen)}},
    )
    _record(
        root,
        "tune",
        "t",
        50.0,
        500.0,
        {"trials": 24, "trials_finished": 24, "study_seconds": 48.0},
        reads={"classifier": {"epochs": 4, "image_size": 32}, "tune.count_scale": 0.01},
    )


VARIANTS = "diffusion.variants=[vanilla,fairskin_s,control_drop_african,control_mix_african_50]"


def test_measured_costs_from_stage_records(tmp_path):
    _fake_root(tmp_path)
    config = build_config("smoke", None, [VARIANTS])  # tune space "ablation": 3 downstream modes
    costs, measured = measured_costs(tmp_path, config)
    assert measured == {"c_ft": "measured", "c_pool": "measured", "c_cls": "measured"}
    # the latest finetune with this config's steps x batch: 60 s / 4 fine-tunes = 15 s each, x 3 fine-tuned
    # variants (the mix is not)
    assert costs.c_ft == pytest.approx(15 * 3)
    # 40 s / 8 pools + 16 s / 8 pools = 7 s a pool, x 4 variants
    assert costs.c_pool == pytest.approx((5 + 2) * 4)
    # 48 s / 24 trials = 2 s, x (2 epochs here / 4 recorded) = 1 s, x 4 variants x 3 modes
    assert costs.c_cls == pytest.approx(1 * 4 * 3)


def test_reused_pools_and_replayed_trials_are_not_priced_as_work(tmp_path):
    # A later look's stages: the evaluate stage scored 2 of the 8 pools (the rest kept in evaluations/), the tune
    # stage trained 6 of 24 trials (the rest replayed from trials/). A unit costs what was done, not what was listed.
    _fake_root(tmp_path)
    gen = tmp_path / "stages" / "generate-g"
    _record(
        tmp_path,
        "evaluate",
        "later",
        6.0,
        450.0,
        {"vanilla_fid_mean": 1.0, "pools_scored": 2},
        inputs={"generate": {"key": "g", "path": str(gen)}},
    )
    _record(
        tmp_path,
        "tune",
        "later",
        15.0,
        550.0,
        {"trials": 24, "trials_finished": 24, "trials_trained": 6, "study_seconds": 12.0},
        reads={"classifier": {"epochs": 4, "image_size": 32}, "tune.count_scale": 0.01},
    )
    costs, measured = measured_costs(tmp_path, build_config("smoke", None, [VARIANTS]))
    assert measured == {"c_ft": "measured", "c_pool": "measured", "c_cls": "measured"}
    # 40 s / 8 pools generated + 6 s / 2 pools scored = 8 s a pool (not 5 + 0.75), x 4 variants
    assert costs.c_pool == pytest.approx((5 + 3) * 4)
    # 12 s / 6 trained trials = 2 s (not 0.5), x (2 epochs / 4) = 1 s, x 4 variants x 3 modes
    assert costs.c_cls == pytest.approx(1 * 4 * 3)


def test_cost_model_reproduces_readme_run_6(tmp_path):
    # Nothing recorded: every unit assumed. At the study preset the model is README run 6 itself:
    # R = 3, K = S = 1 costs finetune 559 + generate 670 + evaluate 155 + tune 289 s.
    costs, measured = measured_costs(tmp_path, build_config("study"))
    assert all(v.startswith("assumed: ") and "no record" in v and HERE_MODEL["source"] in v for v in measured.values())
    assert costs.total(3, 1, 1) == pytest.approx(559 + 670 + 155 + 289)


def test_records_of_far_other_settings_are_not_extrapolated(tmp_path):
    # The smoke-sized records against the study preset: 133x the fine-tune work, 180x the sampling,
    # 40x the classifier's: start-up dominates such records, so the cost model is used and says why.
    _fake_root(tmp_path)
    study = build_config("study")
    costs, measured = measured_costs(tmp_path, study)
    assert all(v.startswith("assumed: ") and "x off" in v for v in measured.values())
    assert costs == measured_costs(tmp_path / "empty", study)[0]


def test_measured_components_newest_file_and_largest_row(tmp_path):
    old = tmp_path / "stages" / "report-a" / "variance_components.csv"
    new = tmp_path / "stages" / "report-b" / "variance_components.csv"
    for path, scale in ((old, 100.0), (new, 1.0)):
        path.parent.mkdir(parents=True)
        path.write_text(
            "endpoint,variant,sigma2_ft,sigma2_pool,sigma2_cls,R,K,S\n"
            f"worst_group_accuracy,fairskin_s,{1e-4 * scale},{2e-4 * scale},,3,2,1\n"
            f"worst_group_accuracy,vanilla_twin,{3e-4 * scale},{1e-4 * scale},,3,2,1\n"
            f"fid,fairskin_s,{4.0 * scale},1.0,,3,2,1\n"
        )
    os.utime(old, (1_000_000, 1_000_000))
    c = measured_components(tmp_path, "worst_group_accuracy")
    assert (c.sigma2_ft, c.sigma2_pool) == (3e-4, 1e-4) and math.isnan(c.sigma2_cls)
    assert (c.R, c.K, c.S) == (3, 2, 1) and str(new) in c.source
    assert measured_components(tmp_path, "essp") is None
    assert measured_components(tmp_path / "nothing", "fid") is None


# ---------------------------------------------------------------- command line


def _run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # config errors exit through input_errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_without_components_names_the_run_and_exits_2(tmp_path, capsys):
    code, out, err = _run_cli(
        [
            "--preset",
            "study",
            f"runtime.runs_root={tmp_path}",
            "--endpoint",
            "worst_group_accuracy",
            "--mde",
            "0.05",
            "--json",
        ],
        capsys,
    )
    assert code == 2 and out == ""
    assert "python jobs/full_pipeline.py --preset study" in err
    assert err.split("\n")[1].rstrip().endswith("tune.train_seeds=2")
    assert f"runtime.runs_root={tmp_path}" in err


def test_module_entry_point_exits_2_without_components(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fairskin.plan",
            "--preset",
            "study",
            f"runtime.runs_root={tmp_path}",
            "--endpoint",
            "worst_group_accuracy",
            "--mde",
            "0.05",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "jobs/full_pipeline.py" in proc.stderr


def test_cli_rejects_unknown_endpoint(tmp_path, capsys):
    code, _, err = _run_cli(
        ["--preset", "study", f"runtime.runs_root={tmp_path}", "--endpoint", "nope", "--mde", "0.05"], capsys
    )
    assert code == 2 and "nope" in err


def _components_csv(root: Path) -> None:
    path = root / "stages" / "report-x" / "variance_components.csv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "endpoint,variant,sigma2_ft,sigma2_pool,sigma2_cls,R,K,S\n"
        "worst_group_accuracy,fairskin_s,4e-4,9e-4,2.5e-3,3,2,2\n"
        "fid,fairskin_s,30.0,10.0,,3,2,1\n"
    )


def test_cli_json_line_with_measured_inputs(tmp_path, capsys):
    _fake_root(tmp_path)
    _components_csv(tmp_path)
    argv = [
        "--preset",
        "smoke",
        VARIANTS,
        f"runtime.runs_root={tmp_path}",
        "--endpoint",
        "worst_group_accuracy",
        "--mde",
        "0.05",
        "--budget-hours",
        "0.5",
        "--json",
    ]
    code, out, err = _run_cli(argv, capsys)
    assert code == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert {"R", "K", "S", "mde", "power", "cost_hours_here", "cost_gpu_hours", "measured"} <= set(last)
    assert all(isinstance(last[k], int) and last[k] >= 1 for k in ("R", "K", "S")) and last["R"] >= MIN_R
    assert last["mde"] <= 0.05 and last["power"] == 0.8
    assert last["alpha"] == pytest.approx(0.05 / 5)  # report.alpha / 5 declared primary endpoints
    m = last["measured"]
    assert m["sigma2_ft"] == m["sigma2_pool"] == m["sigma2_cls"] == "measured"
    assert m["c_ft"] == m["c_pool"] == m["c_cls"] == "measured"
    assert m["gpu"].startswith("assumed: no benchmarks/gpu.py figures")
    # the reported cost is the plan's design at the measured unit costs (45, 28, 12 s: see above)
    assert last["cost_hours_here"] == pytest.approx(UnitCosts(45, 28, 12).total(last["R"], last["K"], last["S"]) / 3600)
    gpu, _, _ = gpu_costs(build_config("smoke", None, [VARIANTS]), None)
    assert last["cost_gpu_hours"] == pytest.approx(gpu.total(last["R"], last["K"], last["S"]) / 3600)
    assert last["budget_mde"]["cost_hours"] <= 0.5
    assert "worst_group_accuracy: R = " in err  # the text went to stderr


def test_cli_generation_endpoint_and_gpu_figures(tmp_path, capsys):
    _fake_root(tmp_path)
    _components_csv(tmp_path)
    figures = {
        "section": "all",
        "mode": "cuda",
        "device": "NVIDIA H100",
        "train_images_per_s_vanilla": 20.0,
        "train_images_per_s_cbdm": 10.0,
        "sample_images_per_s_fp32_50": 2.0,
        "fid_images_per_s_fp32": 400.0,
    }
    (tmp_path / "gpu.jsonl").write_text('{"section": "env"}\n' + json.dumps(figures) + "\n")
    code, out, err = _run_cli(
        [
            "--preset",
            "smoke",
            VARIANTS,
            f"runtime.runs_root={tmp_path}",
            "--endpoint",
            "fid",
            "--mde",
            "20",
            "--gpus",
            "8",
            "--gpu-figures",
            str(tmp_path / "gpu.jsonl"),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["S"] == 1 and last["measured"]["sigma2_cls"].startswith("assumed: 0")
    assert last["measured"]["gpu"] == "measured"
    # paper scale by hand: 12,000 x 8 images per fine-tune (fairskin_s is CBDM: 10 images/s), 15,000 images
    # per pool sampled (3 of 4 pools; the mix is not) and featurised (all 4), a trial 10 epochs x 9,600 x 3
    # forward passes, 4 variants x 3 modes per (pool, seed)
    c_ft = 96_000 / 20 * 2 + 96_000 / 10
    c_pool = 15_000 * (3 / 2.0 + 4 / 400.0)
    c_cls = 12 * 10 * 9_600 * 3 / 400.0
    expected = UnitCosts(c_ft, c_pool, c_cls).total(last["R"], last["K"], last["S"]) / 3600
    assert last["cost_gpu_hours"] == pytest.approx(expected)
    assert last["cost_gpu_wall_hours"] == pytest.approx(expected / 8)


def test_r_only_design_and_efficiency_by_hand():
    """Only R growing (K = S = 1), normal approximation: R = ceil((z_{1-a/2} + z_power)^2 (s_ft + s_pool + s_cls)
    / mde^2) at R (c_ft + c_pool + c_cls) seconds; the planned design (pools and seeds cheap beside a fine-tune,
    their variance large) costs less, so the efficiency ratio is above 1, and exactly 1 where the plan is K = S = 1."""
    from scipy.stats import norm

    comp, costs, gpu = Components(1, 4, 16), UnitCosts(16, 1, 1), UnitCosts(32, 1, 4)
    p = plan(comp, costs, 0.5, 0.05, 0.8, gpu_costs=gpu, method="normal")
    R = math.ceil((norm.ppf(0.975) + norm.ppf(0.8)) ** 2 * (1 + 4 + 16) / 0.5**2)
    assert p.r_only["R"] == R
    assert p.r_only["cost_hours_here"] == pytest.approx(R * (16 + 1 + 1) / 3600)
    assert p.r_only["cost_gpu_hours"] == pytest.approx(R * (32 + 1 + 4) / 3600)
    assert p.efficiency["here"] == pytest.approx(R * 18 / p.cost_seconds) and p.efficiency["here"] > 1
    assert p.efficiency["gpu"] == pytest.approx(R * 37 / gpu.total(p.R, p.K, p.S))
    lever = plan(Components(1, 0, 0), UnitCosts(3, 1, 1), 0.5, 0.05, 0.8, method="normal")  # R is the only lever
    assert (lever.K, lever.S) == (1, 1) and lever.efficiency["here"] == 1 and lever.efficiency["gpu"] is None
