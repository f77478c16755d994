"""The ablation report, rebuilt from MLflow runs found by tag: values, intervals, marks, missing figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fairskin.report import build_report, latest_study, mark_best, seed_interval
from fairskin.tracking import Tracker

GROUPS = ["African", "Asian", "Caucasian"]
T_975_DF2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom (tables)


def _trial_metrics(acc: float, essp: float) -> dict[str, float]:
    out = {"test_accuracy": acc, "test_dp": 0.3, "test_dp_oracle_floor": 0.17, "test_essp": acc / 1.3,
           "test_essp_fairseg": essp, "test_accuracy_ci_low": acc - 0.05, "test_accuracy_ci_high": acc + 0.05,
           "test_essp_fairseg_ci_low": essp - 0.05, "test_essp_fairseg_ci_high": essp + 0.05}
    out.update({f"test_accuracy_{g}": acc - 0.01 * i for i, g in enumerate(GROUPS)})
    return out


@pytest.fixture()
def store(tmp_path):
    """A SQLite MLflow store holding a reference run, two evaluate runs and an ablation study."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = Tracker(uri, "fairskin")
    with pipeline.run("pipeline") as parent:
        with pipeline.run("reference", parent=parent, tags={"fairskin.stage": "reference"}) as ref:
            ref.log_metrics({"test_accuracy": 0.70, "test_essp_fairseg": 0.60, "test_dp": 0.25, "test_essp": 0.56,
                             **{f"test_accuracy_{g}": 0.7 for g in GROUPS}})
        for variant, fid in (("vanilla", 80.0), ("fairskin_s", 60.0)):
            child = parent.child(f"evaluate-{variant}", tags={"fairskin.stage": "evaluate",
                                                              "fairskin.variant": variant})
            child.log_metrics({"fid_mean": fid, "fid_var_subclass": 10.0, "fid_var_group": 2.0, "kid_mean": 0.01,
                               "is_mean": 1.5, **{f"fid_{g}": fid + i for i, g in enumerate(GROUPS)}})
            child.end()
    study = Tracker(uri, "fairskin-tune-ablation-x")
    tags = {"fairskin.kind": "tune", "fairskin.study": "ablation-x", "fairskin.space": "ablation"}
    accuracies = {("vanilla", "random"): [0.60, 0.62, 0.64], ("fairskin_s", "random"): [0.80, 0.82, 0.84],
                  ("fairskin_s", "reweight"): [0.79, 0.83, 0.78]}
    with study.run("ablation-x", tags=tags) as parent:
        for (variant, mode), values in accuracies.items():
            for seed, acc in enumerate(values):
                child = parent.child(f"trial-{variant}-{mode}-{seed}",
                                     tags={**tags, "fairskin.variant": variant, "fairskin.mode": mode})
                child.log_params({"trial.seed": seed, "trial.variant": variant, "trial.mode": mode})
                child.log_metrics(_trial_metrics(acc, acc - 0.1))
                child.end()
    return uri, accuracies


def test_seed_interval_is_the_t_interval_of_the_mean():
    values = [0.6, 0.62, 0.64]
    mean, low, high = seed_interval(values)
    half = T_975_DF2 * np.std(values, ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(0.62) and low == pytest.approx(0.62 - half) and high == pytest.approx(0.62 + half)
    assert math.isnan(seed_interval([0.5])[1])


def test_mark_best_flags_overlapping_intervals_only():
    table = pd.DataFrame({"acc": [0.9, 0.85, 0.5], "acc_low": [0.85, 0.8, 0.45], "acc_high": [0.95, 0.9, 0.55]})
    assert mark_best(table, "acc", +1).tolist() == ["**", "≈", ""]
    assert mark_best(table, "acc", -1).tolist() == ["", "", "**"]


def test_report_rebuilds_tables_and_figures_from_mlflow(store, tmp_path):
    uri, accuracies = store
    assert latest_study(uri) == "ablation-x"
    report = build_report(uri, tmp_path / "report", GROUPS)
    t1 = report.table1.set_index(["variant", "mode"])
    assert len(t1) == 3 and (t1["seeds"] == 3).all()
    for key, values in accuracies.items():
        mean, low, high = seed_interval(values)
        assert t1.loc[key, "accuracy"] == pytest.approx(np.mean(values))
        assert (t1.loc[key, "accuracy_low"], t1.loc[key, "accuracy_high"]) == pytest.approx((low, high))
    # Generation columns come from the variant's evaluate run, whatever the mode.
    assert t1.loc[("fairskin_s", "reweight"), "fid"] == 60.0 and t1.loc[("vanilla", "random"), "fid"] == 80.0
    t2 = report.table2.set_index("variant")
    assert t2.loc["vanilla", "Asian"] == 81.0 and t2.loc["fairskin_s", "African"] == 60.0

    md = report.markdown.read_text()
    # fairskin_s/random is best on accuracy; fairskin_s/reweight overlaps it; vanilla does not.
    lines = {tuple(line.split(" | ")[0:2]): line for line in md.splitlines() if line.startswith("| ")}
    assert "**0.820" in lines[("| fairskin_s", "random")]
    assert "≈" in lines[("| fairskin_s", "reweight")].split(" | ")[8]
    assert "≈" not in lines[("| vanilla", "random")].split(" | ")[8]
    # Drawn where runs exist; missing (never filled in) where none do.
    assert {"figure3a_baseline_vs_variants", "figure4_group_accuracy", "figure6_downstream_modes"} <= set(report.figures)
    assert all(p.stat().st_size > 0 for p in report.figures.values())
    assert set(report.missing) == {"figure3b_augmentation_count", "figure5_proportion_search"}
    assert "_missing: no finished trials of an `aug_count` study" in md
    assert (tmp_path / "report" / "table1.csv").exists()


def test_seeds_option_uses_the_first_n_seeds(store, tmp_path):
    uri, accuracies = store
    report = build_report(uri, tmp_path / "report", GROUPS, seeds=2)
    t1 = report.table1.set_index(["variant", "mode"])
    assert (t1["seeds"] == 2).all()
    assert t1.loc[("vanilla", "random"), "accuracy"] == pytest.approx(0.61)
