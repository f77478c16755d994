"""Variance components of a paired difference (fairskin.metrics.components): no Ray, fast.

References that could disagree with the module: simulations with known components, mean squares
worked by hand, statsmodels' OLS ANOVA table, and the REML log-likelihood computed here from the
dense covariance matrix and maximised with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import optimize
from statsmodels.stats.anova import anova_lm

from fairskin.metrics.components import Components, sd_per_repeat, var_of_mean, variance_components

TRUTH = {"sigma2_ft": 1.0, "sigma2_pool": 0.5, "sigma2_cls": 0.25}


def simulate(
    n: int,
    R: int,
    K: int,
    S: int,
    rng: np.random.Generator,
    mu: float = 0.3,
    ft: float = 1.0,
    pool: float = 0.5,
    cls: float = 0.25,
) -> np.ndarray:
    """n data sets of the nested model, shape (n, R, K, S)."""
    return (
        mu
        + rng.normal(0, math.sqrt(ft), (n, R, 1, 1))
        + rng.normal(0, math.sqrt(pool), (n, R, K, 1))
        + rng.normal(0, math.sqrt(cls), (n, R, K, S))
    )


def frame_of(y: np.ndarray) -> pd.DataFrame:
    """(R, K, S) array -> one row per (repeat, pool, seed); pool and seed labels restart in each repeat."""
    r, k, s = np.meshgrid(*(np.arange(n) for n in y.shape), indexing="ij")
    return pd.DataFrame({"d": y.ravel(), "repeat": r.ravel(), "pool": k.ravel(), "seed": s.ravel()})


def dense_reml_loglik(frame: pd.DataFrame, ft: float, pool: float, cls: float) -> float:
    """REML log-likelihood (up to a constant) of d ~ 1 from the dense covariance matrix V."""
    y = frame["d"].to_numpy()
    same_repeat = frame["repeat"].to_numpy()[:, None] == frame["repeat"].to_numpy()[None, :]
    same_pool = same_repeat & (frame["pool"].to_numpy()[:, None] == frame["pool"].to_numpy()[None, :])
    V = ft * same_repeat + pool * same_pool + cls * np.eye(len(y))
    Vi = np.linalg.inv(V)
    ones = np.ones(len(y))
    info = ones @ Vi @ ones
    r = y - (ones @ Vi @ y) / info
    return -0.5 * (np.linalg.slogdet(V)[1] + math.log(info) + r @ Vi @ r)


def dense_reml_optimum(frame: pd.DataFrame) -> float:
    """The best dense REML log-likelihood scipy finds from a few starts (components >= 0)."""
    total = float(frame["d"].var())
    best = -math.inf
    for start in ([total / 3] * 3, [total / 10, total / 10, total * 0.8], [total * 0.8, total / 10, total / 10]):
        fit = optimize.minimize(
            lambda p: -dense_reml_loglik(frame, *p),
            start,
            method="L-BFGS-B",
            bounds=[(0, None), (0, None), (1e-8 * total, None)],
        )
        best = max(best, -fit.fun)
    return best


# ---------------------------------------------------------------- intervals


def test_intervals_cover_known_components_in_200_simulations():
    """Each 95 % interval covers its true component in at least 90 % of 200 simulated studies."""
    rng = np.random.default_rng(20240601)
    data = simulate(200, 20, 3, 3, rng, **{k.removeprefix("sigma2_"): v for k, v in TRUTH.items()})
    covered = {name: 0 for name in TRUTH}
    for y in data:
        # the intervals come from the mean squares whichever the point estimator; moments is the fast one
        c = variance_components(frame_of(y), method="moments")
        for name, true in TRUTH.items():
            low, high = getattr(c, "ci_" + name.removeprefix("sigma2_"))
            covered[name] += low <= true <= high
    coverage = {name: n / len(data) for name, n in covered.items()}
    for name, rate in coverage.items():
        # >= 0.90 is 3.3 binomial sd under 0.95; < 0.995 rules out intervals too wide to miss
        assert 0.90 <= rate < 0.995, (name, coverage)


def test_fine_tune_interval_covers_a_small_component_next_to_a_large_pool_component():
    """Where Satterthwaite's interval fails (sigma2_ft small against sigma2_pool, R = 5), MLS still covers."""
    rng = np.random.default_rng(20240602)
    data = simulate(200, 5, 3, 3, rng, ft=0.05, pool=1.0, cls=0.25)
    fits = [variance_components(frame_of(y), method="moments") for y in data]
    coverage = {
        "ft": np.mean([c.ci_ft[0] <= 0.05 <= c.ci_ft[1] for c in fits]),
        "pool": np.mean([c.ci_pool[0] <= 1.0 <= c.ci_pool[1] for c in fits]),
    }
    # a Satterthwaite interval for sigma2_ft covers about 25 % of the time here
    assert all(0.90 <= rate < 0.995 for rate in coverage.values()), coverage


def test_moments_match_hand_worked_mean_squares():
    # R = K = S = 2; repeat 1: pools (1, 3), (4, 6); repeat 2: pools (7, 9), (8, 12)
    frame = frame_of(np.array([[[1, 3], [4, 6]], [[7, 9], [8, 12]]], dtype=float))
    # grand mean 50 / 8 = 6.25; pool means 2, 5, 8, 10; repeat means 3.5, 9
    # SS_seed = 1+1+1+1+1+1+4+4 = 14 (df 4); SS_pool = 2 (2.25+2.25+1+1) = 13 (df 2);
    # SS_repeat = 4 (2.75^2 + 2.75^2) = 60.5 (df 1); total 87.5
    c = variance_components(frame, method="moments")
    assert c.mean == pytest.approx(6.25)
    assert dict(c.df) == {"repeat": 1, "pool": 2, "seed": 4}
    assert dict(c.mean_squares) == pytest.approx({"repeat": 60.5, "pool": 6.5, "seed": 3.5})
    assert c.sigma2_cls == pytest.approx(3.5)
    assert c.sigma2_pool == pytest.approx((6.5 - 3.5) / 2)  # 1.5
    assert c.sigma2_ft == pytest.approx((60.5 - 6.5) / 4)  # 13.5
    # chi-square table, df 4: 0.484419 (2.5 %), 11.1433 (97.5 %)
    assert c.ci_cls == pytest.approx((14 / 11.1433, 14 / 0.484419), rel=1e-4)
    assert (c.R, c.K, c.S, c.method, c.notes) == (2, 2, 2, "moments", ())


def test_mean_squares_match_statsmodels_anova_table():
    y = simulate(1, 6, 3, 2, np.random.default_rng(3))[0]
    frame = frame_of(y)
    table = anova_lm(smf.ols("d ~ C(repeat) + C(repeat):C(pool)", data=frame).fit(), typ=1)
    c = variance_components(frame, method="moments")
    assert c.mean_squares["repeat"] == pytest.approx(table.loc["C(repeat)", "mean_sq"])
    assert c.mean_squares["pool"] == pytest.approx(table.loc["C(repeat):C(pool)", "mean_sq"])
    assert c.mean_squares["seed"] == pytest.approx(table.loc["Residual", "mean_sq"])
    assert c.df == {"repeat": 5, "pool": 12, "seed": 18}


def test_negative_moment_estimate_truncated_at_zero_and_noted():
    # every pool mean is 5: MS_repeat = MS_pool = 0, MS_seed = (25+25+16+16+9+9+4+4) / 4 = 27
    frame = frame_of(np.array([[[0, 10], [1, 9]], [[2, 8], [3, 7]]], dtype=float))
    c = variance_components(frame, method="moments")
    assert (c.sigma2_ft, c.sigma2_pool, c.sigma2_cls) == (0.0, 0.0, pytest.approx(27.0))
    assert any("sigma2_pool: moment estimate -13.5 < 0 truncated at 0" in n for n in c.notes)
    assert c.ci_pool == (0.0, 0.0)
    # REML pools the violating mean squares instead: all three strata share (4 x 27 + 0 + 0) / 7
    reml = variance_components(frame, method="reml")
    assert reml.sigma2_cls == pytest.approx(108 / 7, rel=1e-4)
    assert reml.sigma2_ft == pytest.approx(0, abs=1e-4) and reml.sigma2_pool == pytest.approx(0, abs=1e-4)


# ---------------------------------------------------------------- REML


@pytest.mark.parametrize(
    "R, K, S, seed", [(20, 3, 3, 0), (20, 3, 3, 1), (20, 3, 3, 2), (8, 2, 4, 3), (12, 4, 1, 4), (10, 1, 3, 5)]
)
def test_reml_matches_moments_on_balanced_data(R, K, S, seed):
    frame = frame_of(simulate(1, R, K, S, np.random.default_rng(seed))[0])
    moments = variance_components(frame, method="moments")
    assert not any("truncated" in n for n in moments.notes)  # REML = moments only when all are > 0
    reml = variance_components(frame, method="reml")
    assert not any("fell short" in n for n in reml.notes)  # MixedLM's own fit, not the closed form
    assert reml.mean == pytest.approx(moments.mean, abs=1e-8)
    for name in ("sigma2_ft", "sigma2_pool", "sigma2_cls"):
        a, b = getattr(reml, name), getattr(moments, name)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=2e-3), name
    assert reml.ci_ft == moments.ci_ft and reml.ci_pool == moments.ci_pool


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_reml_reaches_the_dense_reml_optimum_near_the_boundary(seed):
    # small fine-tune and pool components at R = 4: negative moment estimates are common here
    frame = frame_of(simulate(1, 4, 2, 3, np.random.default_rng(seed), ft=0.05, pool=0.1, cls=0.5)[0])
    c = variance_components(frame, method="reml")
    got = dense_reml_loglik(frame, c.sigma2_ft, c.sigma2_pool, c.sigma2_cls)
    assert got >= dense_reml_optimum(frame) - 1e-4


def test_reml_on_unbalanced_data_has_no_intervals_and_reaches_the_optimum():
    frame = frame_of(simulate(1, 6, 2, 3, np.random.default_rng(7))[0])
    frame.loc[[0, 7], "d"] = np.nan  # two classifier seeds missing
    frame = frame.drop(index=[10])  # and one row gone
    with pytest.raises(ValueError, match="balanced"):
        variance_components(frame, method="moments")
    c = variance_components(frame, method="reml")
    assert not c.balanced and c.interval_method.startswith("none")
    assert all(math.isnan(x) for x in c.ci_ft + c.ci_pool + c.ci_cls)
    assert any("2 non-finite" in n for n in c.notes)
    assert any(n.startswith("unbalanced: 2 pools per repeat, 2..3 seeds") for n in c.notes)
    assert (c.R, c.K, c.S) == (6, 2, 3)
    kept = frame[np.isfinite(frame["d"])]
    assert dense_reml_loglik(kept, c.sigma2_ft, c.sigma2_pool, c.sigma2_cls) >= dense_reml_optimum(kept) - 1e-4


# ---------------------------------------------------------------- confounded levels


def test_S1_merges_the_classifier_component_into_the_pool_level():
    y = simulate(1, 10, 3, 3, np.random.default_rng(21))[0]
    frame = frame_of(y)
    one_seed = frame[frame["seed"] == 0]
    pool_values = y[:, :, 0]
    ms_pool = np.sum((pool_values - pool_values.mean(axis=1, keepdims=True)) ** 2) / (10 * 2)
    for method in ("moments", "reml"):
        c = variance_components(one_seed, method=method)
        assert c.S == 1 and math.isnan(c.sigma2_cls) and all(math.isnan(x) for x in c.ci_cls)
        assert any(
            n.startswith("S = 1: the classifier component is confounded with the residual (pool) level")
            for n in c.notes
        )
        assert c.sigma2_pool == pytest.approx(ms_pool, rel=2e-3)
    # a generation endpoint: no seed column at all
    c = variance_components(one_seed.drop(columns="seed"), seed=None, method="moments")
    assert math.isnan(c.sigma2_cls) and c.sigma2_pool == pytest.approx(ms_pool)
    assert any(n.startswith("no seed level") for n in c.notes)


def test_K1_merges_the_pool_component_into_the_fine_tune_level():
    y = simulate(1, 10, 3, 3, np.random.default_rng(22))[0]
    frame = frame_of(y)
    one_pool = frame[frame["pool"] == 0]
    values = y[:, 0, :]  # (R, S)
    ms_repeat = 3 * np.var(values.mean(axis=1), ddof=1)
    ms_seed = np.sum((values - values.mean(axis=1, keepdims=True)) ** 2) / (10 * 2)
    for method in ("moments", "reml"):
        c = variance_components(one_pool, method=method)
        assert c.K == 1 and math.isnan(c.sigma2_pool) and all(math.isnan(x) for x in c.ci_pool)
        assert any(
            n.startswith(
                "K = 1: the pool component is confounded with the fine-tune (repeat) level; "
                "sigma2_ft estimates sigma2_ft + sigma2_pool and"
            )
            for n in c.notes
        )
        assert c.sigma2_ft == pytest.approx((ms_repeat - ms_seed) / 3, rel=2e-3)
        assert c.sigma2_cls == pytest.approx(ms_seed, rel=2e-3)


def test_K1_S1_leaves_only_the_variance_between_repeats():
    y = simulate(1, 8, 1, 1, np.random.default_rng(23))[0]
    for method in ("moments", "reml"):
        c = variance_components(frame_of(y), method=method)
        assert c.sigma2_ft == pytest.approx(np.var(y.ravel(), ddof=1))
        assert math.isnan(c.sigma2_pool) and math.isnan(c.sigma2_cls)
        assert any("sigma2_ft estimates sigma2_ft + sigma2_pool + sigma2_cls" in n for n in c.notes)
        assert any(n.startswith("S = 1") for n in c.notes)


# ---------------------------------------------------------------- design planning


def test_var_of_mean_and_sd_per_repeat_match_simulation():
    R, K, S, n = 4, 2, 3, 20_000
    data = simulate(n, R, K, S, np.random.default_rng(31))
    truth = Components(
        mean=0.3,
        ci_ft=(0, 0),
        ci_pool=(0, 0),
        ci_cls=(0, 0),
        R=R,
        K=K,
        S=S,
        method="truth",
        interval_method="",
        **TRUTH,
    )
    expected = var_of_mean(truth, R, K, S)
    assert expected == pytest.approx(1.0 / 4 + 0.5 / 8 + 0.25 / 24)
    # the variance of a sample variance of n normal values is 2 sigma^4 / (n - 1): allow 4 of its sd
    mc_sd = math.sqrt(2 / (n - 1))
    assert np.var(data.mean(axis=(1, 2, 3)), ddof=1) == pytest.approx(expected, rel=4 * mc_sd)
    sd = sd_per_repeat(truth, K, S)
    assert np.var(data.mean(axis=(2, 3))[:, 0], ddof=1) == pytest.approx(sd**2, rel=4 * mc_sd)
    assert var_of_mean(truth, R, K, S) == pytest.approx(sd**2 / R)


def test_merged_components_count_once_in_var_of_mean():
    y = simulate(1, 10, 1, 3, np.random.default_rng(32))[0]
    c = variance_components(frame_of(y), method="moments")  # K = 1: sigma2_pool NaN, inside sigma2_ft
    assert var_of_mean(c, 10, 1, 3) == pytest.approx(c.sigma2_ft / 10 + c.sigma2_cls / 30)
    # with K = S = 1 the variance of the mean is the squared standard error of the repeat values
    flat = variance_components(frame_of(y[:, :, :1]), method="moments")
    assert var_of_mean(flat, 10, 1, 1) == pytest.approx(np.var(y[:, 0, 0], ddof=1) / 10)
    with pytest.raises(ValueError):
        var_of_mean(c, 0, 1, 1)


# ---------------------------------------------------------------- input handling


def test_pool_labels_and_row_order_do_not_matter():
    frame = frame_of(simulate(1, 5, 3, 2, np.random.default_rng(41))[0])
    base = variance_components(frame, method="moments")
    relabelled = frame.assign(pool=frame["repeat"] * 100 + frame["pool"]).sample(frac=1, random_state=0)
    other = variance_components(relabelled, method="moments")
    numbers = [k for k, v in base.as_row().items() if isinstance(v, float)]
    assert [other.as_row()[k] for k in numbers] == pytest.approx([base.as_row()[k] for k in numbers])
    assert other.notes == base.notes and (other.R, other.K, other.S) == (5, 3, 2)


def test_bad_input_raises():
    frame = frame_of(simulate(1, 3, 2, 2, np.random.default_rng(42))[0])
    with pytest.raises(ValueError, match="duplicate"):
        variance_components(pd.concat([frame, frame.iloc[:1]]), method="moments")
    with pytest.raises(ValueError, match="at least 2 repeats"):
        variance_components(frame[frame["repeat"] == 0], method="moments")
    with pytest.raises(ValueError, match="method"):
        variance_components(frame, method="anova")
    with pytest.raises(KeyError):
        variance_components(frame.drop(columns="seed"))


def test_closed_form_reml_when_mixedlm_fails(monkeypatch):
    """Balanced data whose MixedLM fit fails get the closed-form REML, which is the dense optimum."""
    import fairskin.metrics.components as components

    def broken(design):
        raise ValueError("optimisation failed")

    monkeypatch.setattr(components, "_reml", broken)
    for seed in (11, 12, 13, 14):
        frame = frame_of(simulate(1, 4, 2, 3, np.random.default_rng(seed), ft=0.05, pool=0.1, cls=0.5)[0])
        c = variance_components(frame, method="reml")
        assert any("MixedLM failed: optimisation failed" in n for n in c.notes)
        assert any("exact balanced REML" in n for n in c.notes)
        assert c.mean == pytest.approx(frame["d"].mean())
        got = dense_reml_loglik(frame, c.sigma2_ft, c.sigma2_pool, c.sigma2_cls)
        assert got >= dense_reml_optimum(frame) - 1e-6
