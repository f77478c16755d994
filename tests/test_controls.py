"""The controls' declared tests (fairskin.controls) on per-repeat values simulated with a known truth.

The simulation follows the engine: repeat r of vanilla, the drop control and the mixed controls
share the repeat's seed (a shared repeat-level term), while the twin is salted, so its noise is
its own (independent of vanilla's, same spread). Effects are of the size the study measures
(noise sd 0.05-0.1 per repeat), not 25 times it.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from scipy import stats

from fairskin.controls import (
    controls_report,
    drop_control,
    generation_units,
    sensitivity,
    stated_sensitivity,
    twin_control,
    twin_false_positive_rate,
)
from fairskin.metrics.endpoints import Declaration

GROUPS = ["African", "Asian", "Caucasian"]
PRIMARY = (
    "skin_tone_w1_worst",
    "disease_fidelity_worst",
    "fid_var_subclass_floor_corrected",
    "worst_group_accuracy",
    "essp",
)
SD = {
    "skin_tone_w1_worst": 0.3,
    "disease_fidelity_worst": 0.08,
    "fid_var_subclass_floor_corrected": 150.0,
    "worst_group_accuracy": 0.05,
    "essp": 0.05,
}
MEAN = {
    "skin_tone_w1_worst": 2.0,
    "disease_fidelity_worst": 0.5,
    "fid_var_subclass_floor_corrected": 900.0,
    "worst_group_accuracy": 0.4,
    "essp": 0.5,
}


def _units(
    repeats: int,
    drop_effect: float = 0.3,
    twin_shift: float = 0.0,
    seed: int = 0,
    twin_identical: bool = False,
    mixes: tuple[int, ...] = (),
) -> pd.DataFrame:
    """Per-repeat units of vanilla, the twin, control_drop_african and control_mix_african_<pct>."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(repeats):
        shared = {k: rng.normal(0, s) for k, s in SD.items()}
        agreement = 0.8 + rng.normal(0, 0.05)
        w1 = 1.5 + rng.normal(0, 0.2)
        vanilla = {
            "variant": "vanilla",
            "mode": "random",
            "repeat": r,
            **{k: MEAN[k] + shared[k] for k in SD},
            "skin_tone_agreement_African": agreement,
            "skin_tone_w1_ratio_African": w1,
        }
        rows.append(vanilla)
        twin = (
            dict(vanilla)
            if twin_identical
            else {
                "variant": "vanilla_twin",
                "mode": "random",
                "repeat": r,
                **{k: MEAN[k] + rng.normal(0, s) + (twin_shift * s) for k, s in SD.items()},
                "skin_tone_agreement_African": 0.8 + rng.normal(0, 0.05),
                "skin_tone_w1_ratio_African": 1.5 + rng.normal(0, 0.2),
            }
        )
        twin["variant"] = "vanilla_twin"
        rows.append(twin)
        drop_noise = rng.normal(0, 0.03)
        rows.append(
            {
                **vanilla,
                "variant": "control_drop_african",
                "skin_tone_agreement_African": agreement - drop_effect + drop_noise,
                "skin_tone_w1_ratio_African": w1 + 10 * drop_effect + rng.normal(0, 0.1),
            }
        )
        for pct in mixes:  # a mixture of the two pools: a share-type endpoint moves by pct/100 of the drop
            f = pct / 100
            rows.append(
                {
                    **vanilla,
                    "variant": f"control_mix_african_{pct}",
                    "skin_tone_agreement_African": agreement - f * drop_effect + f * drop_noise + rng.normal(0, 0.01),
                    "skin_tone_w1_ratio_African": w1 + 10 * drop_effect * f + rng.normal(0, 0.1),
                }
            )
    return pd.DataFrame(rows)


def test_a_drop_of_a_relevant_size_is_detected_one_sided_and_a_rise_is_not():
    found = drop_control(_units(3, drop_effect=0.3), "control_drop_african", GROUPS)
    assert found["group"] == "African" and found["n"] == 3 and found["alternative"] == "less"
    assert found["detected"] and found["high"] < 0
    risen = drop_control(_units(3, drop_effect=-0.3), "control_drop_african", GROUPS)
    assert not risen["detected"] and risen["p"] > 0.5  # one-sided: better is not "detected"


def test_a_baseline_already_at_chance_for_the_group_makes_the_drop_control_uninformative_and_says_so():
    units = _units(3, drop_effect=0.02)
    african = units["variant"].isin(["vanilla", "control_drop_african"])
    units.loc[african, "skin_tone_agreement_African"] -= 0.72  # vanilla ~0.08
    found = drop_control(units, "control_drop_african", GROUPS)
    assert found["uninformative"] and found["baseline_mean"] < 1 / 3 and "nothing to drop" in found["why"]


def test_with_two_repeats_nothing_is_tested_and_the_reason_is_given():
    found = drop_control(_units(2), "control_drop_african", GROUPS)
    assert not found["detected"] and "R >= 3" in found["why"] and np.isnan(found["p"])


def test_an_independent_twin_is_flagged_at_most_at_the_declared_rate():
    """200 simulated studies at R = 3 with no true difference: the family-wise rate of a flag stays
    within alpha plus twice its binomial error; a twin shifted by 3 sd on every endpoint at R = 10
    is flagged."""
    declaration = Declaration(primary=PRIMARY)
    flags = [twin_control(_units(3, seed=s), declaration)["flagged"] for s in range(200)]
    assert np.mean(flags) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200)
    shifted = twin_control(_units(10, twin_shift=3.0, seed=1), declaration)
    assert shifted["flagged"] and shifted["tested"] == 5 and not shifted["missing"]


def test_the_simulated_false_positive_rate_agrees_with_studies_drawn_from_the_same_spread():
    """twin_false_positive_rate simulates from the twin's measured sd; an independent check draws
    whole studies (units) at those sds and counts flags: the two rates agree within their errors."""
    declaration = Declaration(primary=PRIMARY)
    units = _units(3, seed=7)
    estimate = twin_false_positive_rate(units, declaration, n_studies=2000, seed=1)
    assert estimate["n"] == 3 and len(estimate["endpoints"]) == 5 and 0 <= estimate["low"] <= estimate["high"] <= 1
    sds = dict(zip(estimate["endpoints"], estimate["sds"]))
    rng = np.random.default_rng(3)
    flagged, studies = 0, 400
    for _ in range(studies):
        rows = []
        for r in range(3):
            rows.append({"variant": "vanilla", "mode": "random", "repeat": r, **{k: 0.0 for k in sds}})
            rows.append(
                {
                    "variant": "vanilla_twin",
                    "mode": "random",
                    "repeat": r,
                    **{k: rng.normal(0, s) for k, s in sds.items()},
                }
            )
        flagged += twin_control(pd.DataFrame(rows), declaration)["flagged"]
    direct = flagged / studies
    se = math.sqrt(max(estimate["rate"], 0.01) * (1 - estimate["rate"]) / studies)
    assert abs(direct - estimate["rate"]) <= 3 * se + 0.01


def test_identical_twin_pools_are_said_to_pass_by_accident():
    twin = twin_control(_units(3, twin_identical=True), Declaration(primary=PRIMARY))
    assert twin["all_zero"] and not twin["flagged"]
    assert {r["verdict"] for r in twin["tests"]} == {"untestable"}  # no spread: never p = 0 or 1 by fiat
    assert not twin_control(_units(3), Declaration(primary=PRIMARY))["all_zero"]


def test_the_sensitivity_curve_expects_the_fraction_of_the_drop_and_states_the_smallest_detected():
    units = _units(6, drop_effect=0.3, mixes=(50, 20, 5), seed=2)
    curve = sensitivity(units, GROUPS)
    share = {r["fraction"]: r for r in curve if r["endpoint"] == "skin_tone_agreement_African"}
    assert sorted(share) == [0.05, 0.2, 0.5, 1.0]
    drop = share[1.0]["effect"]
    # the drop's effect is the hand-computed mean of the paired differences
    v = units[units["variant"] == "vanilla"].set_index("repeat")["skin_tone_agreement_African"]
    c = units[units["variant"] == "control_drop_african"].set_index("repeat")["skin_tone_agreement_African"]
    assert drop == pytest.approx(float((c - v).mean()))
    for fraction, row in share.items():
        assert row["expected"] == pytest.approx(fraction * drop)
        assert row["low"] <= row["expected"] <= row["high"] or fraction == 1.0
    assert share[1.0]["detected"] and share[0.5]["detected"] and share[0.2]["detected"]
    # one-sided t on the 5 % mix, by scipy: the curve's detection agrees with it
    m = units[units["variant"] == "control_mix_african_5"].set_index("repeat")["skin_tone_agreement_African"]
    p = stats.ttest_rel(m.sort_index(), v.sort_index(), alternative="less").pvalue
    assert share[0.05]["detected"] == (p < 0.05)
    distance = [r for r in curve if r["endpoint"] == "skin_tone_w1_ratio_African"]
    assert [r["fraction"] for r in distance] == [0.05, 0.2, 0.5, 1.0] and all(
        math.isnan(r["expected"]) for r in distance
    )
    assert stated_sensitivity(curve) == min(r["fraction"] for r in curve if r["detected"])


def test_controls_report_from_the_evaluate_table_names_what_it_could_not_measure():
    units = _units(3)
    table = units.assign(variant=[v if r == 0 else f"{v}-r{r}" for v, r in zip(units["variant"], units["repeat"])])
    table = table.drop(columns=["repeat", "mode", "worst_group_accuracy", "essp"])
    rebuilt = generation_units(table)
    assert sorted(rebuilt["repeat"].unique()) == [0, 1, 2]
    report = controls_report(rebuilt, GROUPS, declaration=Declaration(primary=PRIMARY))
    assert report["repeats"] == 3 and report["drop_detected"]
    assert report["twin"]["missing"] == ["worst_group_accuracy", "essp"] and report["twin"]["tested"] == 3
    assert math.isfinite(report["twin"]["false_positive_rate"]["rate"])
    with pytest.raises(ValueError, match="names no group"):
        drop_control(units.replace("control_drop_african", "control_drop_martian"), "control_drop_martian", GROUPS)


def _controls_benchmark():
    spec = importlib.util.spec_from_file_location("controls_benchmark", REPO / "benchmarks" / "controls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_compares_the_twins_pools_with_vanillas_repeat_by_repeat():
    bench = _controls_benchmark()
    pools = {
        "vanilla": {"pool": "a"},
        "vanilla-r1": {"pool": "b"},
        "vanilla_twin": {"pool": "c"},
        "vanilla_twin-r1": {"pool": "d"},
    }
    assert bench.twin_pools_differ_from(pools, "vanilla_twin", "vanilla") is True
    pools["vanilla_twin-r1"] = {"pool": "b"}  # one repeat's twin pool is vanilla's: a cache collision
    assert bench.twin_pools_differ_from(pools, "vanilla_twin", "vanilla") is False
    assert bench.twin_pools_differ_from({"vanilla": {"pool": "a"}}, "vanilla_twin", "vanilla") is None
    twin = twin_control(_units(3, twin_identical=True), Declaration(primary=PRIMARY))
    assert "exactly 0" in bench.twin_passes_by_accident(twin, True)
    assert "fingerprints" in bench.twin_passes_by_accident(twin_control(_units(3), Declaration(primary=PRIMARY)), False)
    assert bench.twin_passes_by_accident(twin_control(_units(3), Declaration(primary=PRIMARY)), True) == ""
