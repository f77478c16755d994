"""Level 3: augmentation plans, dynamic rebalancing, and the classifier trainable at smoke size."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fairskin.classify.augment import AugmentPlan, PlanError, check_against_pool, draw_from_pool, plan_counts
from fairskin.classify.reweight import Rebalancer, capped_proportions, group_loss_weights, inverse_accuracy

GROUPS = ("African", "Asian", "Caucasian")
DISEASES = ("d1", "d2", "d3", "d4", "d5")
TRAIN = {(g, d): n for g, n in zip(GROUPS, (10, 50, 200)) for d in DISEASES}


def test_balance_to_and_per_subclass_counts():
    counts = plan_counts(AugmentPlan(kind="balance_to", balance_to=60), TRAIN, GROUPS, DISEASES)
    assert counts[("African", "d1")] == 50 and counts[("Asian", "d3")] == 10 and counts[("Caucasian", "d5")] == 0
    counts = plan_counts(AugmentPlan(kind="per_subclass", per_subclass=7), TRAIN, GROUPS, DISEASES)
    assert set(counts.values()) == {7} and len(counts) == 15


def test_group_proportions_split_equally_over_diseases():
    plan = AugmentPlan(
        kind="group_proportions", total=7500, proportions={"African": 0.3, "Asian": 0.2, "Caucasian": 0.5}
    )
    counts = plan_counts(plan, TRAIN, GROUPS, DISEASES)
    # The paper's example: 2,250 : 1,500 : 3,750, equal over the five diseases.
    assert {counts[(g, "d1")] for g in GROUPS} == {450, 300, 750}
    odd = plan_counts(
        AugmentPlan(kind="group_proportions", total=7, proportions={g: 1 / 3 for g in GROUPS}), TRAIN, GROUPS, DISEASES
    )
    assert sum(odd.values()) == 7


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "group_proportions", "total": 10, "proportions": {"African": -0.1, "Asian": 1.1}}, "non-negative"),
        ({"kind": "group_proportions", "total": 10, "proportions": {"African": 0.5, "Asian": 0.4}}, "sum to 1"),
        ({"kind": "balance_to"}, r"needs \['balance_to'\]"),
    ],
)
def test_invalid_plans(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        AugmentPlan(**kwargs)


def test_plan_exceeding_the_pool_names_the_largest_valid_proportion():
    pool = {(g, d): 100 for g in GROUPS for d in DISEASES}
    plan = AugmentPlan(
        kind="group_proportions", total=1000, proportions={"African": 0.6, "Asian": 0.2, "Caucasian": 0.2}
    )
    counts = plan_counts(plan, TRAIN, GROUPS, DISEASES)
    with pytest.raises(
        PlanError,
        match=r"\(African, d1\) asks 120 images but the pool holds 100: with total 1000, "
        r"the largest valid proportion for African is 0.5000",
    ):
        check_against_pool(plan, counts, pool, DISEASES)
    per = AugmentPlan(kind="per_subclass", per_subclass=101)
    with pytest.raises(PlanError, match="largest valid per_subclass is 100"):
        check_against_pool(per, plan_counts(per, TRAIN, GROUPS, DISEASES), pool, DISEASES)
    bal = AugmentPlan(kind="balance_to", balance_to=150)
    with pytest.raises(PlanError, match="largest valid balance_to is 110"):
        check_against_pool(bal, plan_counts(bal, TRAIN, GROUPS, DISEASES), pool, DISEASES, TRAIN)


def _pool_meta(n=20):
    rows = [{"id": f"p-{g}-{d}-{i:03d}", "group": g, "disease": d} for g in GROUPS for d in DISEASES for i in range(n)]
    return pd.DataFrame(rows)


def test_pool_draw_is_deterministic_and_independent_of_row_order():
    meta = _pool_meta()
    counts = {(g, d): 3 for g in GROUPS for d in DISEASES}
    a, b = draw_from_pool(counts, meta, seed=1), draw_from_pool(counts, meta, seed=1)
    assert np.array_equal(a, b) and len(set(a)) == 45
    assert not np.array_equal(a, draw_from_pool(counts, meta, seed=2))
    shuffled = meta.sample(frac=1, random_state=0).reset_index(drop=True)
    ids = set(meta.loc[a, "id"])
    assert set(shuffled.loc[draw_from_pool(counts, shuffled, seed=1), "id"]) == ids
    picked = meta.loc[a]
    assert picked.groupby(["group", "disease"]).size().eq(3).all()
    assert not np.array_equal(a, draw_from_pool(counts, meta, seed=1, epoch=3))


def test_reweight_is_inverse_accuracy_normalised_over_rows():
    # A = (0.5, 0.25, 0.0) with floor 0.1 -> raw (2, 4, 10); rows [0, 0, 1, 2] -> mean 4.5.
    w = group_loss_weights({"African": 0.5, "Asian": 0.25, "Caucasian": 0.0}, GROUPS, np.array([0, 0, 1, 2]), 0.1)
    assert np.allclose(w, np.array([2, 4, 10]) / 4.5)
    assert np.allclose(inverse_accuracy({"African": float("nan")}, ["African"], 0.2), [5.0])


def test_resample_caps_groups_at_the_pool_and_spreads_the_excess():
    # desired 1:1:2 of 100 -> 25/25/50, but group 2 holds only 10 -> 10, and 90 spread 1:2 -> 30/60.
    p = capped_proportions(np.array([1.0, 1.0, 2.0]), np.array([100, 10, 100]), 100)
    assert np.allclose(p * 100, [30, 10, 60])
    with pytest.raises(ValueError, match="fewer than the total"):
        capped_proportions(np.array([1.0, 1.0]), np.array([10, 10]), 30)
    r = Rebalancer("resample", GROUPS, floor=0.05)
    base = {"African": 0.2, "Asian": 0.3, "Caucasian": 0.5}
    assert r.proportions(base, {g: 1000 for g in GROUPS}, 100) == base  # no validation yet
    r.update({"African": 0.25, "Asian": 0.5, "Caucasian": 1.0})
    assert r.proportions(base, {g: 1000 for g in GROUPS}, 100) == pytest.approx(
        {"African": 4 / 7, "Asian": 2 / 7, "Caucasian": 1 / 7}
    )
    fixed = Rebalancer("random", GROUPS)
    fixed.update({"African": 0.25, "Asian": 0.5, "Caucasian": 1.0})
    assert fixed.proportions(base, {}, 100) == base and np.all(fixed.loss_weights(np.array([0, 1])) == 1)


# --------------------------------------------------------------------------- the trainable (smoke)


@pytest.fixture(scope="module")
def smoke_data(prepared_smoke, tmp_path_factory):
    from fairskin.classify.train import load_classifier_data
    from fairskin.data.prepare import write_synthetic_pool

    config, prepare = prepared_smoke
    pool_dir = write_synthetic_pool(config, tmp_path_factory.mktemp("pool") / "shards", per_subclass=12)
    return config, load_classifier_data(prepare.path / "shards", pool_dir)


def _train(smoke_data, mode, plan, epochs=2, seed=0, **kw):
    from fairskin.classify.train import train_classifier

    config, data = smoke_data
    reports = []
    cfg = config.classifier.model_copy(update={"epochs": epochs})
    result = train_classifier(data, cfg, plan=plan, mode=mode, seed=seed, report=reports.append, **kw)
    return result, reports


PLAN = AugmentPlan(kind="group_proportions", total=90, proportions={"African": 0.5, "Asian": 0.3, "Caucasian": 0.2})


def test_smoke_trial_reports_every_epoch_and_tests_once(smoke_data, tmp_path):
    from fairskin.classify.models import load_saved_classifier
    from fairskin.classify.train import predict

    result, reports = _train(smoke_data, "random", PLAN, out_dir=tmp_path / "out")
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:
        assert {"val_accuracy", "val_dp", "val_essp", "val_essp_fairseg", "val_accuracy_African"} <= set(r)
        assert r["synthetic_rows"] == 90 and r["train_rows"] == len(smoke_data[1].train) + 90
        assert not any(k.startswith("test_") for k in r)  # test figures never reach the search
    assert {"accuracy", "dp", "dp_oracle_floor", "essp", "essp_fairseg", "accuracy_ci"} <= set(result.test)
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    reloaded = load_saved_classifier(tmp_path / "out" / "model")
    data = smoke_data[1]
    assert np.array_equal(predict(reloaded, data.test, 32), predict(result.model, data.test, 32))


def test_same_seed_same_figures(smoke_data):
    a, _ = _train(smoke_data, "reweight", PLAN, seed=3)
    b, _ = _train(smoke_data, "reweight", PLAN, seed=3)
    assert a.history == [dict(h, epoch_seconds=a.history[i]["epoch_seconds"]) for i, h in enumerate(b.history)]
    assert a.test == b.test


def test_reweight_mode_uses_last_epochs_group_accuracy(smoke_data):
    result, reports = _train(smoke_data, "reweight", PLAN, epochs=3)
    data = smoke_data[1]
    assert all(reports[0][f"weight_{g}"] == 1.0 for g in GROUPS)  # no validation before epoch 1
    for before, now in zip(reports, reports[1:]):
        acc = {g: before[f"val_accuracy_{g}"] for g in GROUPS}
        rows = np.concatenate([data.train.group_id, np.repeat(np.arange(3), [45, 27, 18])])
        expected = group_loss_weights(acc, GROUPS, rows, smoke_data[0].classifier.accuracy_floor)
        assert [now[f"weight_{g}"] for g in GROUPS] == pytest.approx(expected.tolist())
        assert now["synthetic_rows"] == 90 and now["proportion_African"] == 0.5  # composition fixed


def test_resample_mode_redraws_the_composition(smoke_data):
    result, reports = _train(smoke_data, "resample", PLAN, epochs=3)
    assert reports[0]["proportion_African"] == 0.5
    capacity = np.array([5 * 12] * 3)
    for before, now in zip(reports, reports[1:]):
        desired = inverse_accuracy({g: before[f"val_accuracy_{g}"] for g in GROUPS}, GROUPS, 0.05)
        expected = capped_proportions(desired, capacity, 90)
        assert [now[f"proportion_{g}"] for g in GROUPS] == pytest.approx(expected.tolist())
        assert now["synthetic_rows"] == 90 and all(now[f"weight_{g}"] == 1.0 for g in GROUPS)


def test_a_plan_larger_than_the_pool_fails_before_training(smoke_data):
    big = AugmentPlan(kind="per_subclass", per_subclass=13)
    with pytest.raises(PlanError, match="largest valid per_subclass is 12"):
        _train(smoke_data, "random", big)


def test_use_gpu_without_cuda_fails_naming_the_field(monkeypatch):
    import torch

    from fairskin.classify.train import classifier_device
    from fairskin.config import ConfigError, build_config

    config = build_config("smoke", overrides=["classifier.use_gpu=true"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="classifier.use_gpu"):
        classifier_device(config.classifier)
    assert classifier_device(build_config("smoke").classifier).type == "cpu"
