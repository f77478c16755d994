"""Verdicts on a family of primary endpoints (fairskin.metrics.verdicts): no Ray, fast.

Every figure is checked against something that could disagree: statsmodels' power functions and
multiple-testing adjustment, scipy's t-tests, hand-worked values, and simulation with a known truth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from fairskin.metrics.paired import tost_paired
from fairskin.metrics.verdicts import (
    VERDICT_COLUMNS,
    _simulated_differences,
    family_verdicts,
    mde,
    repeats_for,
    sd_upper,
    simulate_family_error,
)

POWER = TTestPower()


# ---------------------------------------------------------------- MDE, sd bound, repeats


@pytest.mark.parametrize("n", [3, 5, 10, 30])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_mde_solves_statsmodels_power_equation(n, alpha):
    got = mde(1.0, n, alpha)
    # the MDE's standardised effect has power 0.8 by statsmodels' own power function
    assert POWER.power(got, n, alpha, alternative="two-sided") == pytest.approx(0.8, abs=1e-8)
    reference = POWER.solve_power(effect_size=None, nobs=n, alpha=alpha, power=0.8, alternative="two-sided")
    if POWER.power(reference, n, alpha, alternative="two-sided") == pytest.approx(0.8, abs=1e-6):
        assert got == pytest.approx(reference, rel=1e-6)
    else:
        # solve_power stops at its bracket at small n and alpha (n = 3, alpha = 0.01 gives 7.17 with power
        # 0.787): ours is the true root, so it must lie beyond that edge
        assert (n, alpha) == (3, 0.01) and got > reference
    assert mde(0.03, n, alpha) == pytest.approx(0.03 * got, rel=1e-12)  # metric units: sd x delta


def test_mde_undefined_cases():
    assert math.isnan(mde(1.0, 1, 0.05)) and math.isnan(mde(np.nan, 5, 0.05)) and math.isnan(mde(np.inf, 5, 0.05))
    assert mde(0.0, 5, 0.05) == 0.0
    with pytest.raises(ValueError):
        mde(1.0, 5, alpha=0.9)


@pytest.mark.parametrize(("n", "alpha"), [(3, 0.01), (10, 0.05 / 5)])
def test_mde_has_power_080_by_simulation(n, alpha):
    """Paired t-tests (scipy) on d ~ Normal(mde, sd) reject two-sided at alpha in 80 % of studies."""
    sd = 0.04
    studies = 20_000
    effect = mde(sd, n, alpha)
    d = np.random.default_rng(7).normal(effect, sd, size=(studies, n))
    rate = np.mean(stats.ttest_1samp(d, 0.0, axis=1).pvalue < alpha)
    assert abs(rate - 0.8) <= 4 * math.sqrt(0.8 * 0.2 / studies), rate


def test_sd_upper_by_hand_and_by_coverage():
    # chi2 with 2 df is exponential with mean 2: its 0.2 quantile is -2 ln 0.8 = 0.4463
    q = -2 * math.log(0.8)
    assert q == pytest.approx(0.4463, abs=1e-4)
    assert sd_upper(1.0, 3) == pytest.approx(math.sqrt(2 / q), rel=1e-12)
    assert sd_upper(1.0, 3) == pytest.approx(2.117, abs=5e-4)
    assert sd_upper(0.02, 3) == pytest.approx(0.02 * 2.117, abs=1e-5)
    assert math.isnan(sd_upper(1.0, 1))
    # the bound covers the true sd in 80 % of samples of 5
    samples = np.random.default_rng(8).normal(0.0, 1.0, size=(20_000, 5)).std(axis=1, ddof=1)
    covered = np.mean([sd_upper(s, 5) >= 1.0 for s in samples])
    assert abs(covered - 0.8) <= 4 * math.sqrt(0.16 / 20_000), covered


def test_repeats_for_by_statsmodels_power_and_textbook_value():
    # the classic: d = 0.5 at two-sided alpha 0.05 and power 0.8 needs 34 pairs (G*Power's one-sample t)
    assert repeats_for(1.0, 0.5, 0.05) == 34
    # (statsmodels' power() itself is NaN far in the lower tail, e.g. effect 4 at n = 4: cases kept clear of it)
    for sd, margin, alpha in [(0.02, 0.01, 0.01), (3.0, 2.0, 0.05 / 3), (0.05, 0.15, 0.01)]:
        r = repeats_for(sd, margin, alpha)
        # the margin is detectable with power >= 0.8 at r repeats, not at r - 1 (r = 2 is the floor)
        assert POWER.power(margin / sd, r, alpha, alternative="two-sided") >= 0.8 - 1e-9
        if r > 2:
            assert POWER.power(margin / sd, r - 1, alpha, alternative="two-sided") < 0.8
    assert repeats_for(1.0, 0.001, 0.05, max_n=100) is None
    assert repeats_for(np.nan, 0.1, 0.05) is None
    with pytest.raises(ValueError, match="margin"):
        repeats_for(1.0, 0.0, 0.05)


# ---------------------------------------------------------------- one family


def _family(n=6, seed=10):
    rng = np.random.default_rng(seed)
    return {
        "accuracy": rng.normal(0.10, 0.01, size=n),  # strong effect
        "worst_group_accuracy": rng.normal(0.0, 0.03, size=n),
        "fid_var_subclass": rng.normal(0.0, 40.0, size=n),
        "skin_tone": rng.normal(0.0, 0.02, size=n),
        "disease_fidelity": rng.normal(0.0, 0.02, size=n),
    }


DIRECTIONS = {
    "accuracy": 1,
    "worst_group_accuracy": 1,
    "fid_var_subclass": -1,
    "skin_tone": 1,
    "disease_fidelity": 1,
    "extra": 1,
    "constant": 1,
}
MARGINS = {
    "accuracy": 0.02,
    "worst_group_accuracy": 0.02,
    "fid_var_subclass": 50.0,
    "skin_tone": 0.02,
    "disease_fidelity": 0.02,
    "extra": 0.02,
    "constant": 0.02,
}


def test_holm_family_is_the_endpoints_passed():
    diffs = _family()
    table = family_verdicts(diffs, DIRECTIONS, MARGINS)
    assert list(table.columns) == list(VERDICT_COLUMNS)
    assert table["endpoint"].tolist() == list(diffs)
    for endpoint, d in diffs.items():
        row = table.set_index("endpoint").loc[endpoint]
        assert row["p_t"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-9)
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-9)
        tost = tost_paired(dict(enumerate(d)), dict.fromkeys(range(len(d)), 0.0), MARGINS[endpoint])
        assert row["p_tost"] == pytest.approx(tost.p, rel=1e-9, abs=1e-300)
    strong = table.iloc[0]
    assert strong["p_t"] == table["p_t"].min()
    assert strong["p_holm"] == pytest.approx(5 * strong["p_t"], rel=1e-12)  # by hand: smallest p times m = 5
    assert strong["verdict"] == "better" and (table["m"] == 5).all()
    np.testing.assert_allclose(table["p_holm"], multipletests(table["p_t"], method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(table["p_tost_holm"], multipletests(table["p_tost"], method="holm")[1], rtol=1e-12)
    # the MDE is at the family's first Holm level alpha / 5: statsmodels' power there is 0.8
    for _, row in table.iterrows():
        assert POWER.power(row["mde"] / row["sd"], 6, 0.05 / 5, alternative="two-sided") == pytest.approx(0.8, abs=1e-7)
        assert row["mde_sd_upper80"] == pytest.approx(row["mde"] * sd_upper(1.0, 6), rel=1e-9)

    # a sixth testable endpoint makes m = 6; an untestable one does not count
    six = family_verdicts({**diffs, "extra": np.random.default_rng(1).normal(0, 0.02, 6)}, DIRECTIONS, MARGINS)
    assert six["p_holm"].iloc[0] == pytest.approx(6 * strong["p_t"], rel=1e-12) and (six["m"] == 6).all()
    with_constant = family_verdicts({**diffs, "constant": [0.01] * 6}, DIRECTIONS, MARGINS)
    assert with_constant["p_holm"].iloc[0] == pytest.approx(5 * strong["p_t"], rel=1e-12)
    assert (with_constant["m"] == 5).all()
    np.testing.assert_allclose(with_constant["mde"].iloc[:5], table["mde"], rtol=1e-12)


def test_precedence_of_verdicts():
    rng = np.random.default_rng(12)
    large = rng.normal(0.10, 0.005, size=5)  # large effect, small spread
    tiny = rng.normal(0.0, 0.002, size=8)  # tiny effect, small spread, wide margin
    noisy = rng.normal(0.0, 0.05, size=3)  # small n, big spread
    diffs = {"up": large, "down": large, "tiny": tiny, "noisy": noisy, "flat": [0.02] * 5, "pair": [0.1, 0.3]}
    directions = {"up": 1, "down": -1, "tiny": 1, "noisy": 1, "flat": 1, "pair": 1}
    margins = {"up": 0.01, "down": 0.01, "tiny": 0.02, "noisy": 0.02, "flat": 0.01, "pair": 0.01}
    table = family_verdicts(diffs, directions, margins).set_index("endpoint")
    assert table.loc["up", "verdict"] == "better"
    assert table.loc["down", "verdict"] == "worse"  # higher is worse for this endpoint
    assert table.loc["tiny", "verdict"] == "equivalent"
    assert table.loc["noisy", "verdict"] == "inconclusive"
    assert table.loc["noisy", "repeats_for_margin"] > 3
    assert table.loc["noisy", "mde"] > margins["noisy"]
    for endpoint, why in (("flat", "no spread"), ("pair", "n = 2")):
        row = table.loc[endpoint]
        assert row["verdict"] == "untestable" and row["reason"].startswith(why)
        assert all(math.isnan(row[c]) for c in ("p_t", "p_holm", "p_tost", "p_tost_holm", "mde"))
        assert pd.isna(row["repeats_for_margin"])
    assert math.isnan(table.loc["flat", "low"]) and table.loc["flat", "mean_diff"] == pytest.approx(0.02)
    assert (table["m"] == 4).all()
    # a declared resolution makes tiny spread untestable too
    coarse = family_verdicts({"tiny": tiny}, directions, margins, resolutions={"tiny": 0.01})
    assert coarse["verdict"].iloc[0] == "untestable" and "resolution 0.01" in coarse["reason"].iloc[0]


def test_margins_and_directions_are_checked():
    d = {"accuracy": [0.1, 0.2, 0.3]}
    with pytest.raises(ValueError, match="accuracy"):
        family_verdicts(d, {"accuracy": 1}, {"accuracy": 0.0})
    with pytest.raises(ValueError, match="accuracy"):
        family_verdicts(d, {"accuracy": 1}, {})
    with pytest.raises(ValueError, match="accuracy"):
        family_verdicts(d, {"accuracy": 0}, {"accuracy": 0.1})


# ---------------------------------------------------------------- family-wise error by simulation

SDS = [0.005, 0.01, 0.02, 0.04, 40.0]
SIM_MARGINS = [0.01, 0.01, 0.03, 0.05, 30.0]
NAMES = [f"e{j}" for j in range(len(SDS))]
STUDIES = 1000
BOUND = 0.05 + 2 * math.sqrt(0.05 * 0.95 / STUDIES)


def _loop_verdicts(d):
    """family_verdicts itself on each simulated study of d (studies, m, n)."""
    directions = dict.fromkeys(NAMES, 1)
    margins = dict(zip(NAMES, SIM_MARGINS))
    return np.array(
        [family_verdicts(dict(zip(NAMES, study)), directions, margins)["verdict"].to_numpy() for study in d]
    )


def _clopper_pearson(k, total):
    low = stats.beta.ppf(0.025, k, total - k + 1) if k else 0.0
    high = stats.beta.ppf(0.975, k + 1, total - k) if k < total else 1.0
    return low, high


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("truth", ["null", "at_margin"])
def test_family_wise_error_is_at_most_alpha(n, truth):
    true = [0.0] * 5 if truth == "null" else [m * (-1) ** j for j, m in enumerate(SIM_MARGINS)]
    seed = 100 + n
    d = _simulated_differences(SDS, n, true, STUDIES, seed)
    verdicts = _loop_verdicts(d)
    claimed = np.isin(verdicts, ["better", "worse"]).any(axis=1)
    equivalent = (verdicts == "equivalent").any(axis=1)
    if truth == "null":
        assert claimed.mean() <= BOUND, claimed.mean()
        assert claimed.mean() >= 0.02  # Holm over 5 independent tests is close to alpha, not far below
        if n == 10:
            assert equivalent.mean() > 0.5  # the equivalence test has power at the null with R = 10
    else:
        assert equivalent.mean() <= BOUND, equivalent.mean()

    # the vectorised simulation gives the same verdicts on the same draws
    sim = simulate_family_error(SDS, n, SIM_MARGINS, n_studies=STUDIES, true_diffs=true, seed=seed)
    assert sim["false_positive"]["count"] == (int(claimed.sum()) if truth == "null" else 0)
    assert sim["false_equivalent"]["count"] == (int(equivalent.sum()) if truth == "at_margin" else 0)
    assert sim["equivalent_rate"]["count"] == int(equivalent.sum())
    for j in range(5):
        for v, rate in sim["verdict_rates"][j].items():
            assert rate == pytest.approx(np.mean(verdicts[:, j] == v), abs=1e-12)
    k = sim["equivalent_rate"]["count"]
    assert (sim["equivalent_rate"]["low"], sim["equivalent_rate"]["high"]) == pytest.approx(
        _clopper_pearson(k, STUDIES), rel=1e-6, abs=1e-12
    )
