import numpy as np
import pytest
from scipy import stats

from fairskin.data.prepare import reference_counts
from fairskin.data.sampling import WeightedSampler, sample_weights, subclass_weight


def _fitzpatrick_train_subclasses():
    """Subclass id per training row with the real table's train counts (12..412 -> 10..330)."""
    counts = [n - 2 * max(1, n // 10) for n in reference_counts().values()]
    return np.repeat(np.arange(len(counts)), counts), np.asarray(counts)


def test_weights_are_inverse_counts_normalised_to_mean_one():
    ids, counts = _fitzpatrick_train_subclasses()
    for scheme, expected in (("none", np.ones(15)), ("cbrs", 1 / counts), ("sqrs", 1 / np.sqrt(counts))):
        w = sample_weights(ids, scheme)
        assert w.mean() == pytest.approx(1.0)
        per_subclass = np.array([w[ids == s][0] for s in range(15)])
        assert np.allclose(per_subclass / per_subclass[0], expected / expected[0])
    with pytest.raises(ValueError, match="expected none, cbrs or sqrs"):
        subclass_weight(np.array([3]), "sqrt")


@pytest.mark.parametrize("scheme", ["none", "cbrs", "sqrs"])
def test_many_epochs_match_the_weights(scheme):
    """Over 200 epochs (~440k draws), subclass frequencies fit the expected shares.

    Tolerance: Pearson chi-square goodness of fit (14 d.o.f.) must not reject at alpha = 1e-3,
    and every subclass is within 4.5 binomial standard errors. The draws are seeded, so the
    test is deterministic; the same statistic rejects the wrong weighting (power check).
    """
    ids, counts = _fitzpatrick_train_subclasses()
    sampler = WeightedSampler(ids, scheme, "sampler", seed=3)
    expected_share = counts * subclass_weight(counts, scheme)
    expected_share = expected_share / expected_share.sum()
    assert np.allclose(sampler.subclass_probabilities().to_numpy(), expected_share)
    drawn = np.concatenate([ids[sampler.epoch(e).rows] for e in range(200)])
    observed = np.bincount(drawn, minlength=15)
    total = observed.sum()
    assert stats.chisquare(observed, expected_share * total).pvalue > 1e-3
    se = np.sqrt(expected_share * (1 - expected_share) / total)
    assert np.all(np.abs(observed / total - expected_share) < 4.5 * se)
    if scheme == "cbrs":  # balanced: every subclass ~1/15, the 10-image one included
        assert np.allclose(observed / total, 1 / 15, atol=0.003)
        wrong = counts / counts.sum()
        assert stats.chisquare(observed, wrong * total).pvalue < 1e-12


def test_draw_is_a_function_of_seed_and_epoch():
    ids, _ = _fitzpatrick_train_subclasses()
    a, b = WeightedSampler(ids, "sqrs", seed=1), WeightedSampler(ids, "sqrs", seed=1)
    assert np.array_equal(a.epoch(4).rows, b.epoch(4).rows)
    assert not np.array_equal(a.epoch(4).rows, a.epoch(5).rows)
    assert not np.array_equal(a.epoch(4).rows, WeightedSampler(ids, "sqrs", seed=2).epoch(4).rows)


def test_exactly_one_way_of_applying_weights():
    ids, counts = _fitzpatrick_train_subclasses()
    by_sampler = WeightedSampler(ids, "cbrs", "sampler", seed=0).epoch(0)
    assert np.all(by_sampler.loss_weights == 1.0)  # the draw already carries the weights
    by_loss = WeightedSampler(ids, "cbrs", "loss", seed=0).epoch(0)
    assert sorted(by_loss.rows) == list(range(len(ids)))  # a plain permutation
    assert by_loss.loss_weights.mean() == pytest.approx(1.0, rel=1e-5)
    small, big = ids[by_loss.rows] == 1, ids[by_loss.rows] == 13  # 10 vs 330 train images
    assert by_loss.loss_weights[small][0] / by_loss.loss_weights[big][0] == pytest.approx(33.0)
    with pytest.raises(ValueError, match="expected sampler or loss"):
        WeightedSampler(ids, "cbrs", "both")


def test_rank_slices_partition_the_epoch():
    ids, _ = _fitzpatrick_train_subclasses()
    plan = WeightedSampler(ids, "sqrs", seed=0).epoch(0)
    parts = [plan.slice(start=8, rank=r, world=3) for r in range(3)]
    merged = np.empty(len(plan.rows) - 8, np.int64)
    for r, part in enumerate(parts):
        merged[r::3] = part.rows
    assert np.array_equal(merged, plan.rows[8:])
