"""Repeats until conclusive (fairskin.metrics.sequential): no Ray, fast.

Every figure is checked against something that could disagree: hand-worked spending values and
scipy's normal and t quantiles, simulated studies with a known truth drawn from streams other than
the calibration's, scipy's t statistics in a brute-force loop, and the fixed-design verdicts of
fairskin.metrics.verdicts for a one-look design.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fairskin.metrics.sequential import (
    SEQUENTIAL_COLUMNS,
    _sequential_outcome,
    efficacy_boundaries,
    equivalence_boundaries,
    looks,
    obf_spending,
    sequential_verdicts,
    simulate_sequential,
)
from fairskin.metrics.verdicts import family_verdicts, mde

ALPHA = 0.05
N_MAX = 12
STUDIES = 20_000  # simulated sequential studies per check (>= 10 000 asked)


def mc_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- design


def test_looks():
    assert looks(3, 2, 12) == [3, 5, 7, 9, 11, 12]
    assert looks(3, 3, 12) == [3, 6, 9, 12]
    assert looks(4, 4, 12) == [4, 8, 12]
    assert looks(12, 2, 12) == [12]
    for bad in ((2, 2, 12), (3, 0, 12), (5, 2, 4)):
        with pytest.raises(ValueError):
            looks(*bad)


def test_obf_spending_hand_worked():
    cumulative, increments = obf_spending(0.05, [0.25, 0.5, 1.0])
    # t = 1: exactly alpha
    assert cumulative[-1] == pytest.approx(0.05, abs=1e-15)
    # t = 0.5 by hand: z_{0.975} = 1.959964, / sqrt(0.5) = 2.771808, two-sided tail 2 (1 - Phi) = 0.005575
    z = stats.norm.ppf(1 - 0.05 / 2) / math.sqrt(0.5)
    assert z == pytest.approx(2.771808, abs=1e-6)
    assert cumulative[1] == pytest.approx(2 * (1 - stats.norm.cdf(z)), rel=1e-12)
    assert cumulative[1] == pytest.approx(0.005575, abs=5e-7)
    # t = 0.25: z = 3.919928, 2 (1 - Phi) = 8.857e-5
    assert cumulative[0] == pytest.approx(8.857e-5, rel=1e-3)
    assert increments == pytest.approx(np.diff(cumulative, prepend=0.0), abs=1e-18)
    assert increments.sum() == pytest.approx(0.05, abs=1e-15) and np.all(increments > 0)
    for bad in ([0.0, 1.0], [0.5, 0.5], [0.5, 1.2]):
        with pytest.raises(ValueError):
            obf_spending(0.05, bad)


def test_one_look_boundaries_are_the_fixed_t_quantiles():
    """n_start = n_max: one look spends all alpha there, the exact t quantiles of the fixed design."""
    assert efficacy_boundaries([12], 0.025) == pytest.approx([stats.t.isf(0.025 / 2, 11)], rel=1e-12)
    assert equivalence_boundaries([12], 0.025) == pytest.approx([stats.t.isf(0.025, 11)], rel=1e-12)


def test_boundaries_cached_deterministic_and_copied():
    first = efficacy_boundaries(looks(3, 2, N_MAX), ALPHA / 2)
    first[:] = 0.0  # a copy: the cache is untouched
    again = efficacy_boundaries((3, 5, 7, 9, 11, 12), ALPHA / 2)
    assert np.all(again > 2) and np.all(np.diff(again) < 0)  # O'Brien-Fleming shape: strict early, ~fixed late
    assert again[-1] < stats.t.isf(ALPHA / 2 / 2 / 2, N_MAX - 1)  # near the fixed-design 2.59, far below 2x alpha
    other = efficacy_boundaries((3, 5, 7, 9, 11, 12), ALPHA / 2, n_sim=100_000, seed=5)
    assert other == pytest.approx(again, rel=0.03)  # another calibration stream agrees within its noise
    with pytest.raises(ValueError):
        efficacy_boundaries([2, 5], 0.025)


@pytest.mark.parametrize("design", [(3, 2), (3, 3)])
def test_boundaries_spend_alpha_on_fresh_studies(design):
    """First-crossing rates of new null studies (sd 0.03, not 1: sigma-free) follow the spending function."""
    n_start, batch = design
    plan = looks(n_start, batch, N_MAX)
    level = ALPHA / 2
    c, e = efficacy_boundaries(plan, level), equivalence_boundaries(plan, level)
    target, _ = obf_spending(level, np.array(plan) / N_MAX)
    studies = 200_000
    rng = np.random.default_rng(20240611)  # not the calibration's stream
    margin, sd = 0.05, 0.03
    d = sd * rng.standard_normal((studies, N_MAX))
    t = np.stack([stats.ttest_1samp(d[:, :n], 0.0, axis=1).statistic for n in plan], axis=1)
    # at the least favourable point of equivalence, true difference = +margin: the upper TOST statistic
    at_margin = d + margin
    upper = np.stack([stats.ttest_1samp(at_margin[:, :n], margin, axis=1).statistic for n in plan], axis=1)
    for crossed, calibration_paths in ((np.abs(t) > c, 200_000), (upper < -e, 400_000)):
        first = np.cumsum(crossed, axis=1) > 0
        realised = first.mean(axis=0)  # cumulative share crossed by look j
        tolerance = 3 * np.sqrt(target * (1 - target) * (1 / studies + 1 / calibration_paths)) + 2 / studies
        assert np.all(np.abs(realised - target) <= tolerance), (realised, target)


# ---------------------------------------------------------------- verdicts at a look


def brute_force(differences, directions, margins, plan, alpha):
    """Verdicts by a plain loop over looks with scipy's t statistics (no code shared with the module)."""
    m = len(differences)
    c, e = efficacy_boundaries(plan, alpha / m), equivalence_boundaries(plan, alpha / m)
    out = {}
    for name, d in differences.items():
        d = np.asarray(d, dtype=float)
        verdict, decided_at = None, None
        for j, n in enumerate(plan[: plan.index(len(d)) + 1]):
            x = d[:n]
            if np.any(np.isnan(x)) or np.all(x == x[0]):
                continue
            t = stats.ttest_1samp(x, 0.0).statistic
            above = stats.ttest_1samp(x, -margins[name], alternative="greater").statistic
            below = stats.ttest_1samp(x, margins[name], alternative="less").statistic
            if abs(t) > c[j]:
                verdict = "better" if t * directions[name] > 0 else "worse"
            elif above > e[j] and -below > e[j]:
                verdict = "equivalent"
            if verdict:
                decided_at = n
                break
        if verdict is None:
            verdict = "untestable" if (np.any(np.isnan(d)) or np.all(d == d[0])) else "inconclusive"
        out[name] = (verdict, decided_at)
    return out


def hand_built():
    noise = np.array([0.3, -0.5, 0.1, 0.6, -0.2, -0.4, 0.1])
    return {
        "fid": -1.0 + 0.01 * noise,  # lower is better, far below 0: better at n = 5
        "accuracy": 0.002 * noise,  # tiny spread within a wide margin: equivalent
        "auroc": -0.3 + 0.01 * noise,  # higher is better, far below: worse
        "ece": 0.02 * noise + 0.01,  # inconclusive with a tight margin
        "gap": np.r_[1.0, 1.01, 0.99, 1.0, 1.005, -3.0, -3.0],  # better at n = 5, wiped out by n = 7
        "flat": np.full(7, 0.25),  # no spread: untestable
        "broken": np.r_[0.01, 0.02, 0.015, np.nan, 0.0, 0.01, 0.02],  # a failed repeat: untestable
    }


def test_sequential_verdicts_agree_with_brute_force():
    plan = looks(3, 2, N_MAX)
    data = hand_built()
    directions = {"fid": -1, "accuracy": 1, "auroc": 1, "ece": -1, "gap": 1, "flat": 1, "broken": 1}
    margins = {"fid": 0.1, "accuracy": 0.05, "auroc": 0.1, "ece": 0.001, "gap": 0.1, "flat": 0.1, "broken": 0.1}
    frame, stop = sequential_verdicts(data, directions, margins, alpha=ALPHA, n_max=N_MAX, looks=plan)
    assert list(frame.columns) == list(SEQUENTIAL_COLUMNS) and len(frame) == 7 and not stop
    expected = brute_force(data, directions, margins, plan, ALPHA)
    by = frame.set_index("endpoint")
    for name, (verdict, decided_at) in expected.items():
        assert by.loc[name, "verdict"] == verdict, name
        assert (pd.isna(by.loc[name, "decided_at"]) and decided_at is None) or by.loc[name, "decided_at"] == decided_at
    # the hand-built cases cover every verdict, the kept one included
    assert {n: v for n, (v, _) in expected.items()} == {
        "fid": "better",
        "accuracy": "equivalent",
        "auroc": "worse",
        "ece": "inconclusive",
        "gap": "better",
        "flat": "untestable",
        "broken": "untestable",
    }
    assert expected["fid"][1] == 5 and expected["gap"][1] == 5
    # current-look statistics against scipy; the kept verdict's current t no longer crosses
    c = efficacy_boundaries(plan, ALPHA / 7)[2]
    for name in ("fid", "ece", "gap"):
        assert by.loc[name, "t"] == pytest.approx(stats.ttest_1samp(data[name], 0.0).statistic, rel=1e-10)
        se = stats.sem(data[name])
        assert by.loc[name, ["low", "high"]].tolist() == pytest.approx(
            [data[name].mean() - c * se, data[name].mean() + c * se], rel=1e-10
        )
    assert abs(by.loc["gap", "t"]) < by.loc["gap", "boundary"] == pytest.approx(c)
    assert by.loc["accuracy", "t_tost"] == pytest.approx(
        min(stats.ttest_1samp(data["accuracy"], -0.05).statistic, -stats.ttest_1samp(data["accuracy"], 0.05).statistic)
    )
    assert by.loc["flat", "reason"].startswith("no spread") and "non-finite" in by.loc["broken", "reason"]
    assert (frame["look"] == 3).all() and (frame["m"] == 7).all() and (frame["n"] == 7).all()


def test_stop_rule():
    plan = looks(3, 2, N_MAX)
    directions, margins = {"fid": -1, "accuracy": 1}, {"fid": 0.1, "accuracy": 0.05}
    data = hand_built()
    both = {"fid": data["fid"], "accuracy": data["accuracy"]}
    assert sequential_verdicts(both, directions, margins, alpha=ALPHA, n_max=N_MAX, looks=plan)[1]
    open_ = {"fid": data["fid"], "accuracy": data["ece"]}
    frame, stop = sequential_verdicts(
        open_, directions, {"fid": 0.1, "accuracy": 0.001}, alpha=ALPHA, n_max=N_MAX, looks=plan
    )
    assert not stop and frame["verdict"].tolist() == ["better", "inconclusive"]
    # at the cap the study stops whatever is open
    rng = np.random.default_rng(3)
    last = {"fid": rng.normal(0, 1, N_MAX), "accuracy": rng.normal(0, 1, N_MAX)}
    frame, stop = sequential_verdicts(
        last, directions, {"fid": 0.01, "accuracy": 0.01}, alpha=ALPHA, n_max=N_MAX, looks=plan
    )
    assert stop and (frame["look"] == len(plan)).all()
    with pytest.raises(ValueError):  # 6 is not a look
        sequential_verdicts({"fid": np.ones(6)}, directions, margins, alpha=ALPHA, n_max=N_MAX, looks=plan)
    with pytest.raises(ValueError):  # unequal n
        sequential_verdicts({"fid": np.ones(5), "accuracy": np.ones(7)}, directions, margins, n_max=N_MAX, looks=plan)
    with pytest.raises(ValueError):  # no margin declared
        sequential_verdicts({"fid": np.ones(5)}, directions, {}, n_max=N_MAX, looks=plan)


def test_one_look_design_is_the_fixed_design_of_verdicts():
    """m = 1 and a single look: Holm is no adjustment, so family_verdicts must give the same verdicts."""
    rng = np.random.default_rng(17)
    seen = set()
    for true in (0.0, 0.02, 0.08, -0.08, 0.5) * 4:
        d = rng.normal(true, 0.05, N_MAX)
        fixed = family_verdicts({"x": d}, {"x": 1}, {"x": 0.06}, alpha=ALPHA)["verdict"].iloc[0]
        frame, stop = sequential_verdicts({"x": d}, {"x": 1}, {"x": 0.06}, alpha=ALPHA, n_max=N_MAX, looks=[N_MAX])
        assert stop and frame["verdict"].iloc[0] == fixed
        seen.add(fixed)
    assert {"better", "worse", "equivalent", "inconclusive"} <= seen


def test_vectorised_simulation_decides_as_sequential_verdicts():
    """The simulation's engine and the pipeline's function stop at the same look with the same verdicts."""
    plan = looks(3, 2, N_MAX)
    sds = np.array([0.02, 3.0, 1.0])
    true = np.array([1.0, -1.0, 0.0]) * sds
    margins = np.array([1.0, 1.0, 1.2]) * sds
    c, e = efficacy_boundaries(plan, ALPHA / 3), equivalence_boundaries(plan, ALPHA / 3)
    rng = np.random.default_rng(99)
    z = rng.standard_normal((60, 3, N_MAX))
    mean_z = np.stack([z[..., :n].mean(axis=-1) for n in plan], axis=-1)
    sd_z = np.stack([z[..., :n].std(axis=-1, ddof=1) for n in plan], axis=-1)
    codes, used = _sequential_outcome(mean_z, sd_z, true / sds, margins / sds, plan, c, e)
    names = {1: "better", -1: "worse", 2: "equivalent", 0: "inconclusive"}
    endpoints = ["a", "b", "c"]
    seen = set()
    for s in range(len(z)):
        d = true[:, None] + sds[:, None] * z[s]
        for n in plan:
            data = {k: d[i, :n] for i, k in enumerate(endpoints)}
            frame, stop = sequential_verdicts(
                data, dict.fromkeys(endpoints, 1), dict(zip(endpoints, margins)), alpha=ALPHA, n_max=N_MAX, looks=plan
            )
            if stop:
                break
        assert n == used[s]
        assert frame["verdict"].tolist() == [names[k] for k in codes[s]]
        seen.update(frame["verdict"])
    assert {"better", "worse", "equivalent", "inconclusive"} <= seen and len(set(used)) >= 3


# ---------------------------------------------------------------- the rule in simulated studies


@pytest.mark.parametrize(("m", "batch"), [(2, 2), (3, 3)])
def test_family_wise_false_better_worse(m, batch):
    """Global null, margins too tight for equivalence: family-wise false better/worse <= alpha + 2 MC errors."""
    sds = [0.02, 3.0, 1.0][:m]
    result = simulate_sequential(sds, [0.1 * s for s in sds], None, ALPHA, 3, batch, N_MAX, STUDIES, seed=2)
    rate = result["false_better_worse"]["rate"]
    assert rate <= ALPHA + 2 * mc_error(ALPHA, STUDIES), result["false_better_worse"]
    # and the alpha is spent, not wasted: near the Bonferroni family's 1 - (1 - alpha/m)^m
    exact = 1 - (1 - ALPHA / m) ** m
    assert abs(rate - exact) <= 3 * math.sqrt(2) * mc_error(exact, STUDIES), (rate, exact)


@pytest.mark.parametrize(("m", "batch"), [(2, 2), (3, 3)])
def test_family_wise_false_equivalent_at_the_margin(m, batch):
    """True differences exactly at +-margin (the least favourable point): false equivalent <= alpha + 2 MC errors."""
    sds = [0.02, 3.0, 1.0][:m]
    margins = list(sds)  # margin = 1 sd, where equivalence is most often (falsely) reached
    true = [mg * (-1) ** k for k, mg in enumerate(margins)]
    result = simulate_sequential(sds, margins, true, ALPHA, 3, batch, N_MAX, STUDIES, seed=3)
    assert result["false_equivalent"]["rate"] <= ALPHA + 2 * mc_error(ALPHA, STUDIES), result["false_equivalent"]
    assert result["false_equivalent"]["rate"] > 0.02  # the check is not vacuous: the bound is approached


def test_power_and_expected_repeats_under_an_effect():
    """Effect 1.5 x the fixed-design MDE at n_max on both endpoints: E[repeats] <= 0.8 n_max, power >= 0.8."""
    sds = [0.02, 0.5]
    mdes = [mde(s, N_MAX, ALPHA / 2) for s in sds]
    result = simulate_sequential(sds, mdes, [1.5 * x for x in mdes], ALPHA, 3, 2, N_MAX, STUDIES, seed=4)
    assert result["mde_fixed"] == pytest.approx(mdes)
    assert result["expected_repeats"]["mean"] <= 0.8 * N_MAX, result["expected_repeats"]
    for power in result["power"]:
        assert power["low"] >= 0.8, power
    assert result["false_better_worse"]["count"] == 0 or result["false_better_worse"]["rate"] < 1e-3
    assert sum(result["stop_share"].values()) == pytest.approx(1.0)
