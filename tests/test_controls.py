"""The controls' declared tests (fairskin.controls) on per-repeat values whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairskin.controls import controls_report, drop_control, generation_units, twin_control

GROUPS = ["African", "Asian", "Caucasian"]


def _units(repeats: int, drop_effect: float, twin_shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """vanilla, vanilla_twin and control_drop_african over ``repeats`` repeats: repeat-level noise shared
    within a repeat (common random numbers), small independent noise per variant."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(repeats):
        shared = rng.normal(0, 0.05)
        for variant, shift in (("vanilla", 0.0), ("vanilla_twin", twin_shift), ("control_drop_african", 0.0)):
            agreement = 0.8 + shared + shift + rng.normal(0, 0.02)
            if variant == "control_drop_african":
                agreement -= drop_effect
            rows.append({"variant": variant, "mode": "random", "repeat": r,
                         "skin_tone_agreement_African": agreement, "skin_tone": agreement,
                         "accuracy": 0.6 + shared + shift + rng.normal(0, 0.02),
                         "worst_group_accuracy": 0.4 + shared + rng.normal(0, 0.02),
                         "fid_var_subclass": 10 + rng.normal(0, 1), "disease_fidelity": 0.7 + rng.normal(0, 0.02)})
    return pd.DataFrame(rows)


def test_a_large_drop_is_detected_one_sided_and_a_rise_is_not():
    found = drop_control(_units(3, drop_effect=0.5), "control_drop_african", GROUPS)
    assert found["group"] == "African" and found["n"] == 3 and found["alternative"] == "less"
    assert found["detected"] and found["mean_diff"] < -0.4 and found["high"] < 0
    risen = drop_control(_units(3, drop_effect=-0.5), "control_drop_african", GROUPS)
    assert not risen["detected"] and risen["p"] > 0.5  # one-sided: better is not "detected"


def test_a_baseline_already_at_chance_for_the_group_makes_the_drop_control_uninformative_and_says_so():
    """Study run 2 (issue 13): vanilla's African pools agreed 0.076, the control's drop was -0.047 and
    not detected; the report must say the generator left nothing to drop, not only 'not detected'."""
    units = _units(3, drop_effect=0.02)
    african = units["variant"].isin(["vanilla", "control_drop_african"])
    units.loc[african, "skin_tone_agreement_African"] -= 0.72  # vanilla ~0.08
    found = drop_control(units, "control_drop_african", GROUPS)
    assert found["uninformative"] and found["baseline_mean"] < 1 / 3
    assert "nothing to drop" in found["why"] and "0.0" in found["why"]
    healthy = drop_control(_units(3, drop_effect=0.5), "control_drop_african", GROUPS)
    assert not healthy["uninformative"] and healthy["why"] == "" and healthy["baseline_mean"] > 0.7


def test_with_two_repeats_nothing_is_tested_and_the_reason_is_given():
    found = drop_control(_units(2, drop_effect=0.5), "control_drop_african", GROUPS)
    assert not found["detected"] and "R >= 3" in found["why"] and np.isnan(found["p"])


def test_an_equivalent_twin_is_not_flagged_and_a_shifted_one_is():
    calm = [twin_control(_units(5, 0.5, seed=s))["flagged"] for s in range(20)]
    assert sum(calm) <= 3  # Holm at 0.05: rare false alarms on an equivalent twin
    shifted = twin_control(_units(5, 0.5, twin_shift=0.3))
    assert shifted["flagged"] and shifted["tested"] == 5 and not shifted["missing"]
    flagged = [t["metric"] for t in shifted["tests"] if t["p_holm"] < 0.05]
    assert set(flagged) <= {"accuracy", "skin_tone"} and flagged


def test_twin_metrics_missing_from_the_units_are_named_not_invented():
    units = _units(4, 0.5).drop(columns=["accuracy", "worst_group_accuracy"])
    twin = twin_control(units)
    assert twin["missing"] == ["accuracy", "worst_group_accuracy"] and twin["tested"] == 3


def test_controls_report_and_generation_units_from_the_evaluate_table():
    units = _units(3, 0.5)
    table = units.assign(variant=[v if r == 0 else f"{v}-r{r}" for v, r in zip(units["variant"], units["repeat"])])
    table = table.drop(columns=["repeat", "mode", "skin_tone", "accuracy", "worst_group_accuracy"])
    table["skin_tone_agreement"] = units["skin_tone"]
    rebuilt = generation_units(table)
    assert sorted(rebuilt["repeat"].unique()) == [0, 1, 2] and "skin_tone" in rebuilt
    report = controls_report(rebuilt, GROUPS)
    assert report["repeats"] == 3 and report["drop_detected"] and report["twin_not_flagged"]
    assert report["twin"]["missing"] == ["accuracy", "worst_group_accuracy"]
    with pytest.raises(ValueError, match="names no group"):
        drop_control(units.replace("control_drop_african", "control_drop_martian"), "control_drop_martian", GROUPS)
