"""Paired comparisons over generator repeats (fairskin.metrics.paired): no Ray, fast."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from fairskin.metrics.paired import (
    TABLE_COLUMNS,
    holm,
    paired_difference,
    paired_table,
    repeat_counts,
    repeat_values,
    t_interval,
    tost_paired,
)

# ---------------------------------------------------------------- repeat_values


def test_repeat_values_average_seeds_within_a_repeat():
    frame = pd.DataFrame(
        {
            "repeat": [1, 1, 1, 0, 0, 0, 2, 2],
            "seed": [0, 1, 2, 0, 1, 2, 0, 1],
            "accuracy": [0.8, 0.9, 1.0, 0.6, np.nan, 0.7, np.nan, np.inf],
        }
    )
    values = repeat_values(frame, "accuracy")
    assert values.index.tolist() == [0, 1]  # sorted; repeat 2 has no finite value and is dropped
    assert values.loc[0] == pytest.approx(0.65)  # the NaN seed is ignored
    assert values.loc[1] == pytest.approx(0.9)
    assert values.name == "accuracy"
    counts = repeat_counts(frame, "accuracy")
    assert counts.index.tolist() == [0, 1]
    assert counts.tolist() == [2, 3]


def test_repeat_values_weigh_seeds_equally_and_accept_no_seed_column():
    frame = pd.DataFrame({"repeat": [0, 0, 0], "seed": [0, 0, 1], "fid": [10.0, 20.0, 45.0]})
    assert repeat_values(frame, "fid").loc[0] == pytest.approx((15.0 + 45.0) / 2)
    assert repeat_counts(frame, "fid").loc[0] == 2
    assert repeat_values(frame, "fid", seed=None).loc[0] == pytest.approx(25.0)


# ---------------------------------------------------------------- t_interval


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_t_interval_equals_scipy(level):
    x = np.random.default_rng(3).normal(0.7, 0.05, size=5)
    got = t_interval(x, level)
    low, high = stats.t.interval(level, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert got.n == 5
    assert got.mean == pytest.approx(x.mean(), abs=1e-15)
    assert got.low == pytest.approx(low, abs=1e-15)
    assert got.high == pytest.approx(high, abs=1e-15)


def test_t_interval_degenerate():
    one = t_interval([0.4])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    assert t_interval([np.nan, 0.4]).n == 1  # non-finite values dropped
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean)
    constant = t_interval([2.0, 2.0, 2.0])
    assert constant.mean == 2.0 and math.isnan(constant.low) and math.isnan(constant.high)
    assert constant.reason.startswith("no spread")


def test_t_interval_resolution_is_in_the_metrics_units():
    x = np.array([0.70, 0.71, 0.69, 0.70])  # sd = 0.00816 by hand: sqrt(0.0002 / 3)
    assert np.std(x, ddof=1) == pytest.approx(math.sqrt(0.0002 / 3))
    coarse = t_interval(x, resolution=0.01)  # a metric reported to 0.01 cannot show this spread
    assert math.isnan(coarse.low) and math.isnan(coarse.high) and "resolution 0.01" in coarse.reason
    fine = t_interval(x, resolution=0.001)
    low, high = stats.t.interval(0.95, 3, loc=x.mean(), scale=stats.sem(x))
    assert (fine.low, fine.high) == pytest.approx((low, high), rel=1e-12) and fine.reason == ""
    # the same spread at 100 x the level is still testable: the tolerance is not relative to the values
    assert t_interval(100 + x, resolution=0.001).reason == ""
    with pytest.raises(ValueError, match="resolution"):
        t_interval(x, resolution=-1.0)


# ---------------------------------------------------------------- paired_difference


def _pairs(seed=0, n=8):
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.7, 0.05, size=n)
    treatment = baseline + 0.02 + rng.normal(0, 0.03, size=n)
    return treatment, baseline


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_t_equals_scipy_ttest_rel(alternative):
    treatment, baseline = _pairs()
    keys = range(len(treatment))
    got = paired_difference(dict(zip(keys, treatment)), dict(zip(keys, baseline)), alternative=alternative)
    expected = stats.ttest_rel(treatment, baseline, alternative=alternative).pvalue
    assert got.n == len(treatment) and got.dropped == 0
    assert got.p_t == pytest.approx(expected, rel=1e-12)
    d = treatment - baseline
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (got.mean, got.low, got.high) == pytest.approx((d.mean(), low, high), rel=1e-12)


def test_pairs_only_on_shared_keys():
    treatment, baseline = _pairs(seed=1, n=9)
    t = pd.Series(treatment[:7], index=[0, 1, 2, 3, 4, 5, 6])  # repeats 0..6
    b = pd.Series(baseline[2:], index=[6, 5, 4, 3, 2, 7, 8])  # repeats 2..8, shuffled order
    got = paired_difference(t, b)
    assert got.keys == (2, 3, 4, 5, 6)
    assert got.n == 5
    assert got.dropped == 4  # 0, 1 only in treatment; 7, 8 only in baseline
    shared_t = t.loc[[2, 3, 4, 5, 6]].to_numpy()
    shared_b = b.loc[[2, 3, 4, 5, 6]].to_numpy()
    assert got.mean == pytest.approx(np.mean(shared_t - shared_b))
    assert got.p_t == pytest.approx(stats.ttest_rel(shared_t, shared_b).pvalue, rel=1e-12)
    # a non-finite value unpairs its repeat too
    b_nan = b.copy()
    b_nan.loc[3] = np.nan
    assert paired_difference(t, b_nan).keys == (2, 4, 5, 6)


def test_exact_sign_flip_permutation_by_hand():
    base = {r: 0.0 for r in range(6)}
    # six positive differences: only the observed signs and all flipped reach |mean| -> 2 / 64
    all_positive = paired_difference({r: r + 1.0 for r in range(6)}, base)
    assert all_positive.p_perm == pytest.approx(2 / 64)
    assert paired_difference({r: r + 1.0 for r in range(6)}, base, alternative="greater").p_perm == pytest.approx(
        1 / 64
    )
    assert paired_difference({r: r + 1.0 for r in range(6)}, base, alternative="less").p_perm == pytest.approx(1.0)
    # |d| = 1, 2, 3, 4, 5, 0.5 with the 0.5 negative: sum 14.5 of at most 15.5; only flipping
    # nothing or the 0.5 keeps sum >= 14.5, mirrored for <= -14.5 -> 4 / 64 two-sided, 2 / 64 greater
    one_negative = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0, 5: -0.5}
    assert paired_difference(one_negative, base).p_perm == pytest.approx(4 / 64)
    assert paired_difference(one_negative, base, alternative="greater").p_perm == pytest.approx(2 / 64)
    assert "exact" in all_positive.method


def _exact_sign_flip_p(d, alternative):
    """Brute force over all 2^n sign vectors (the observed one included), independent of scipy."""
    n = len(d)
    signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    means = signs @ d / n
    observed = d.mean()
    if alternative == "two-sided":
        return np.mean(np.abs(means) >= abs(observed) * (1 - 1e-12))
    return np.mean(means >= observed - abs(observed) * 1e-12)


@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
def test_monte_carlo_permutation_beyond_16_pairs_agrees_with_exact_enumeration(alternative):
    n = 17
    d = np.random.default_rng(2).normal(0.0, 1.0, size=n) + 0.35
    exact = _exact_sign_flip_p(d, alternative)
    assert 0.01 < exact < 0.5  # a p-value the Monte-Carlo error is small against
    keys = range(n)
    got = paired_difference(dict(zip(keys, d)), dict.fromkeys(keys, 0.0), alternative=alternative)
    assert "Monte-Carlo" in got.method
    flips = 100_000
    se = math.sqrt(exact * (1 - exact) / flips)
    assert abs(got.p_perm - exact) <= 4 * se + 2 / flips, (got.p_perm, exact, se)
    again = paired_difference(dict(zip(keys, d)), dict.fromkeys(keys, 0.0), alternative=alternative)
    assert again.p_perm == got.p_perm  # seeded


def test_small_n_gives_interval_without_p():
    two = paired_difference({0: 1.0, 1: 1.5}, {0: 0.5, 1: 0.7})
    assert two.n == 2
    assert math.isnan(two.p_t) and math.isnan(two.p_perm)
    d = np.array([0.5, 0.8])
    low, high = stats.t.interval(0.95, 1, loc=d.mean(), scale=stats.sem(d))
    assert (two.mean, two.low, two.high) == pytest.approx((d.mean(), low, high))
    five = paired_difference({r: r + 1.0 for r in range(5)}, {r: 0.0 for r in range(5)})
    assert not math.isnan(five.p_t) and math.isnan(five.p_perm)  # t from 3, permutation from 6
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.p_t)


def test_constant_difference_is_untestable_not_p_zero():
    # The case: one test image per repeat, every repeat 0.01 lower. Not "significant, worse".
    treatment = {0: 0.80, 1: 0.75, 2: 0.70}
    baseline = {0: 0.81, 1: 0.76, 2: 0.71}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = paired_difference(treatment, baseline)
    assert math.isnan(got.p_t), got.p_t
    assert math.isnan(got.low) and math.isnan(got.high)
    assert got.mean == pytest.approx(-0.01)
    assert got.reason.startswith("no spread")
    table = paired_table(
        pd.DataFrame(
            [
                {"variant": v, "repeat": r, "accuracy": x}
                for v, side in (("base", baseline), ("new", treatment))
                for r, x in side.items()
            ]
        ),
        "base",
        ["accuracy"],
        {"accuracy": 1},
    )
    assert math.isnan(table["p_t"].iloc[0]) and not table["significant"].iloc[0] and table["better"].iloc[0] == 0
    assert table["reason"].iloc[0].startswith("no spread")


def test_zero_and_rounding_level_spread_are_untestable_without_warnings():
    same = {r: 0.3 + r for r in range(7)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = paired_difference(same, dict(same))
        shifted = {r: v + 0.1 for r, v in same.items()}
        rounding = paired_difference(shifted, same)  # sd(d) about 2e-16: float rounding of values near 6
    assert np.std(np.array(list(shifted.values())) - np.array(list(same.values())), ddof=1) > 0
    for result in (got, rounding):
        assert math.isnan(result.p_t) and math.isnan(result.p_perm)
        assert math.isnan(result.low) and math.isnan(result.high)
        assert result.reason.startswith("no spread") and "untestable" in result.method
    assert got.mean == 0.0 and rounding.mean == pytest.approx(0.1)


def test_resolution_decides_spread_in_metric_units():
    rng = np.random.default_rng(4)
    baseline = rng.normal(40.0, 3.0, size=6)  # FID-like values
    treatment = baseline - 2.0 + rng.normal(0, 0.05, size=6)  # sd(d) about 0.05 FID
    sd = np.std(treatment - baseline, ddof=1)
    keys = range(6)
    below = paired_difference(dict(zip(keys, treatment)), dict(zip(keys, baseline)), resolution=2 * sd)
    assert math.isnan(below.p_t) and math.isnan(below.p_perm) and math.isnan(below.low)
    assert f"resolution {2 * sd:g}" in below.reason
    above = paired_difference(dict(zip(keys, treatment)), dict(zip(keys, baseline)), resolution=sd / 2)
    assert above.reason == ""
    assert above.p_t == pytest.approx(stats.ttest_rel(treatment, baseline).pvalue, rel=1e-12)
    assert above.p_perm == pytest.approx(2 / 64)  # all six differences negative
    with pytest.raises(ValueError, match="resolution"):
        paired_difference(dict(zip(keys, treatment)), dict(zip(keys, baseline)), resolution=np.nan)


def test_bad_alternative_is_refused():
    with pytest.raises(ValueError):
        paired_difference({0: 1.0}, {0: 1.0}, alternative="bigger")


# ---------------------------------------------------------------- holm


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.4]), [0.8, 0.8])
    np.testing.assert_allclose(holm([0.9, 0.6]), [1.0, 1.0])  # capped at 1


def test_holm_passes_nan_through_and_does_not_count_it():
    got = holm([0.01, np.nan, 0.04, 0.03, np.nan, 0.005])
    assert np.isnan(got[[1, 4]]).all()
    np.testing.assert_allclose(got[[0, 2, 3, 5]], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([np.nan])).all()
    assert holm([]).shape == (0,)


def test_holm_equals_statsmodels_multipletests():
    rng = np.random.default_rng(6)
    for size in (1, 2, 5, 30):
        p = rng.uniform(0, 0.1, size=size) ** rng.uniform(0.5, 2, size=size)
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    p = np.array([0.02, np.nan, 0.001, 0.04, np.nan, 0.3])
    got = holm(p)
    tested = ~np.isnan(p)
    np.testing.assert_allclose(got[tested], multipletests(p[tested], method="holm")[1], rtol=1e-12)


def test_holm_is_monotone_and_not_below_raw():
    p = np.random.default_rng(5).uniform(0, 0.2, size=30)
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)


# ---------------------------------------------------------------- paired_table


def _made_up_values(repeats=6, seed=11):
    """Baseline + two variants over R repeats: a shared per-repeat level, then the variant's effect."""
    rng = np.random.default_rng(seed)
    level = rng.normal(0.70, 0.05, size=repeats)  # the repeat's generator seed moves every variant
    fid = rng.normal(40.0, 3.0, size=repeats)
    dp = rng.normal(0.10, 0.02, size=repeats)
    rows = []
    for variant, effect in (("vanilla", 0.0), ("fairskin_s", 1.0), ("fairskin_none", 0.0)):
        for r in range(repeats):
            rows.append(
                {
                    "variant": variant,
                    "repeat": r,
                    "accuracy": level[r] + 0.1 * effect + rng.normal(0, 0.01),  # real effect: +0.1
                    "worst_group_accuracy": level[r] + rng.normal(0, 0.03),  # null: same distribution
                    "fid": fid[r] - 8.0 * effect + rng.normal(0, 0.5),  # lower is better: -8
                    "dp": dp[r] + 0.05 * effect + rng.normal(0, 0.002),  # not ranked
                }
            )
    return pd.DataFrame(rows)


DIRECTIONS = {"accuracy": 1, "worst_group_accuracy": 1, "fid": -1, "dp": 0}


def test_paired_table_flags_the_real_effect_only():
    values = _made_up_values()
    metrics = ["accuracy", "worst_group_accuracy", "fid", "dp"]
    table = paired_table(values, "vanilla", metrics, DIRECTIONS)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert table["variant"].tolist() == ["fairskin_s"] * 4 + ["fairskin_none"] * 4
    assert table["metric"].tolist() == metrics * 2
    assert (table["n"] == 6).all() and (table["dropped"] == 0).all()
    row = table.set_index(["variant", "metric"])

    effect = row.loc[("fairskin_s", "accuracy")]
    assert effect["mean_diff"] == pytest.approx(0.1, abs=0.02)
    assert effect["low"] > 0 and effect["significant"] and effect["better"] == 1
    assert effect["p_perm"] == pytest.approx(2 / 64)  # all six differences positive
    assert row.loc[("fairskin_s", "fid")]["significant"] and row.loc[("fairskin_s", "fid")]["better"] == 1

    dp = row.loc[("fairskin_s", "dp")]
    assert dp["significant"] and dp["better"] == 0  # a clear effect, but dp is not ranked
    assert (table.loc[table["metric"] == "dp", "better"] == 0).all()

    for variant, metric in [
        ("fairskin_s", "worst_group_accuracy"),
        ("fairskin_none", "accuracy"),
        ("fairskin_none", "worst_group_accuracy"),
        ("fairskin_none", "fid"),
        ("fairskin_none", "dp"),
    ]:
        assert not row.loc[(variant, metric)]["significant"], (variant, metric)
        assert row.loc[(variant, metric)]["better"] == 0

    # Holm over all eight tests of the table, checked against statsmodels
    np.testing.assert_allclose(table["p_holm"], multipletests(table["p_t"], method="holm")[1], rtol=1e-12)
    assert (table["p_holm"] >= table["p_t"]).all()
    assert (table["reason"] == "").all()


def test_paired_table_resolution_per_metric_leaves_untestable_rows_out_of_holm():
    values = _made_up_values()
    metrics = ["accuracy", "worst_group_accuracy", "fid", "dp"]
    # FID reported to 5 units: its differences (sd about 0.7) cannot be resolved; accuracy at 0 resolution can
    table = paired_table(values, "vanilla", metrics, DIRECTIONS, resolution={"fid": 5.0})
    fid = table["metric"] == "fid"
    assert table.loc[fid, "p_t"].isna().all() and table.loc[fid, "low"].isna().all()
    assert table.loc[fid, "reason"].str.contains("resolution 5").all()
    assert not table.loc[fid, "significant"].any() and (table.loc[fid, "better"] == 0).all()
    rest = table.loc[~fid, "p_t"].to_numpy()
    assert len(rest) == 6 and not np.isnan(rest).any()
    np.testing.assert_allclose(table.loc[~fid, "p_holm"], multipletests(rest, method="holm")[1], rtol=1e-12)


def test_paired_table_worse_and_unpaired_repeats():
    values = _made_up_values()
    worse = values.assign(
        accuracy=np.where(values["variant"] == "fairskin_s", values["accuracy"] - 0.2, values["accuracy"])
    )
    worse = worse[~((worse["variant"] == "fairskin_s") & (worse["repeat"] == 5))]  # one repeat missing
    table = paired_table(worse, "vanilla", ["accuracy"], DIRECTIONS).set_index(["variant", "metric"])
    row = table.loc[("fairskin_s", "accuracy")]
    assert row["n"] == 5 and row["dropped"] == 1
    assert row["mean_diff"] < 0 and row["significant"] and row["better"] == -1


def test_paired_table_with_two_repeats_shows_intervals_only():
    values = _made_up_values(repeats=2)
    table = paired_table(values, "vanilla", ["accuracy", "dp"], DIRECTIONS)
    assert table["p_t"].isna().all() and table["p_holm"].isna().all()
    assert table["low"].notna().all()
    assert not table["significant"].any() and (table["better"] == 0).all()


def test_paired_table_refuses_bad_input():
    values = _made_up_values()
    with pytest.raises(ValueError, match="direction"):
        paired_table(values, "vanilla", ["accuracy"], {})
    with pytest.raises(ValueError, match="baseline"):
        paired_table(values, "nope", ["accuracy"], DIRECTIONS)
    with pytest.raises(ValueError, match="more than one row"):
        paired_table(pd.concat([values, values]), "vanilla", ["accuracy"], DIRECTIONS)


# ---------------------------------------------------------------- tost_paired (equivalence)


def _tost_by_hand(d, lower, upper):
    """Schuirmann's two one-sided tests from the t distribution directly (no ttest_1samp)."""
    n = len(d)
    se = np.std(d, ddof=1) / np.sqrt(n)
    p_lower = stats.t.sf((np.mean(d) + lower) / se, n - 1)  # H0: mean <= -lower
    p_upper = stats.t.cdf((np.mean(d) - upper) / se, n - 1)  # H0: mean >= +upper
    return p_lower, p_upper


def test_tost_known_equivalent_by_hand():
    rng = np.random.default_rng(21)
    baseline = rng.normal(0.70, 0.05, size=12)  # shared per-unit level (12 generators)
    treatment = baseline + rng.normal(0.003, 0.01, size=12)
    keys = range(12)
    got = tost_paired(dict(zip(keys, treatment)), dict(zip(keys, baseline)), margin=0.05)
    d = treatment - baseline
    p_lower, p_upper = _tost_by_hand(d, 0.05, 0.05)
    assert (got.p_lower, got.p_upper) == pytest.approx((p_lower, p_upper), rel=1e-10)
    assert got.p == pytest.approx(max(p_lower, p_upper), rel=1e-10)
    assert got.p < 1e-6 and got.equivalent
    low, high = stats.t.interval(0.90, 11, loc=d.mean(), scale=stats.sem(d))  # the dual 1 - 2 alpha interval
    assert (got.mean, got.low, got.high) == pytest.approx((d.mean(), low, high), rel=1e-12)
    assert -0.05 < got.low and got.high < 0.05
    assert got.n == 12 and got.dropped == 0


def test_tost_known_different_and_asymmetric_margins():
    rng = np.random.default_rng(22)
    baseline = rng.normal(60.0, 4.0, size=8)
    treatment = baseline + 5.0 + rng.normal(0, 0.5, size=8)  # FID up by 5, margin 3: not equivalent
    keys = range(8)
    got = tost_paired(dict(zip(keys, treatment)), dict(zip(keys, baseline)), margin=3.0)
    p_lower, p_upper = _tost_by_hand(treatment - baseline, 3.0, 3.0)
    assert got.p_upper == pytest.approx(p_upper, rel=1e-10) and got.p_lower == pytest.approx(p_lower, rel=1e-10)
    assert got.p_upper > 0.99 and not got.equivalent
    # the same differences inside an asymmetric margin (-1, +8) are equivalent
    wide = tost_paired(dict(zip(keys, treatment)), dict(zip(keys, baseline)), margin=1.0, upper_margin=8.0)
    p_lower, p_upper = _tost_by_hand(treatment - baseline, 1.0, 8.0)
    assert (wide.p_lower, wide.p_upper) == pytest.approx((p_lower, p_upper), rel=1e-10)
    assert wide.equivalent and wide.low > -1.0 and wide.high < 8.0


def test_tost_too_noisy_is_not_equivalent_and_agrees_with_the_interval():
    rng = np.random.default_rng(23)
    baseline = rng.normal(0.5, 0.1, size=3)
    treatment = baseline + rng.normal(0.0, 0.06, size=3)  # mean near 0, but 3 noisy pairs
    got = tost_paired(dict(enumerate(treatment)), dict(enumerate(baseline)), margin=0.05)
    inside = -0.05 < got.low and got.high < 0.05
    assert got.equivalent == inside
    assert not got.equivalent


def test_tost_degenerate_and_bad_input():
    same = {r: 0.3 + r for r in range(4)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        identical = tost_paired(same, dict(same), margin=0.05)  # byte-identical pools
        shifted = tost_paired({r: v + 0.1 for r, v in same.items()}, same, margin=0.05)
    for result in (identical, shifted):  # byte-identical pools are not "equivalent" by fiat
        assert math.isnan(result.p) and math.isnan(result.p_lower) and math.isnan(result.p_upper)
        assert math.isnan(result.low) and not result.equivalent and result.reason.startswith("no spread")
    assert identical.mean == 0.0
    rng = np.random.default_rng(24)
    d = rng.normal(0.0, 0.002, size=5)
    coarse = tost_paired(dict(enumerate(d)), dict.fromkeys(range(5), 0.0), margin=0.05, resolution=0.01)
    assert math.isnan(coarse.p) and not coarse.equivalent and "resolution 0.01" in coarse.reason
    fine = tost_paired(dict(enumerate(d)), dict.fromkeys(range(5), 0.0), margin=0.05, resolution=0.0001)
    assert (fine.p_lower, fine.p_upper) == pytest.approx(_tost_by_hand(d, 0.05, 0.05), rel=1e-10)
    one = tost_paired({0: 1.0, 1: 2.0}, {0: 1.0}, margin=0.1)
    assert one.n == 1 and one.dropped == 1 and math.isnan(one.p) and not one.equivalent
    with pytest.raises(ValueError, match="margins"):
        tost_paired(same, same, margin=0.0)
    with pytest.raises(ValueError, match="alpha"):
        tost_paired(same, same, margin=0.1, alpha=0.5)
