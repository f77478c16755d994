"""Finished classifier trials kept on the runs root and replayed by later studies (``fairskin.tune.trial_memo``).

The reference is training itself: a replayed trial must report what the same trial reports when it trains with no
memo at all, and anything that changes what a trial would compute (the pool's images, the seed) must train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairskin.tune.spaces import load_space
from fairskin.tune.trial_memo import MEMO_DIR, REPLAYED, memo_for


@pytest.fixture(scope="module")
def study_inputs(prepared_smoke, tmp_path_factory):
    """Two pools with different images, the real shards, the resolved ``downstream`` space (no Ray)."""
    from fairskin.data.prepare import write_synthetic_pool
    from fairskin.tune.classifier import check_study

    config, prepare = prepared_smoke
    folder = tmp_path_factory.mktemp("memo-pools")
    pools = {
        "vanilla": write_synthetic_pool(config, folder / "a", per_subclass=20),
        "other": write_synthetic_pool(config, folder / "b", per_subclass=20, namespace="other-pool"),
    }
    real = prepare.path / "shards"
    return config, pools, real, check_study(config, load_space("downstream"), pools, real)


def _memo(root: Path, pools: dict[str, Path], real: Path, resources: dict[str, float]):
    """The memo a study on ``root`` over ``pools`` (pool id -> shard folder) makes, from the fingerprints its runs
    are tagged with."""
    from fairskin.tune.study import input_fingerprints

    return memo_for(root, *input_fingerprints(pools, real), resources)


def _data(real: Path, pool: Path):
    from fairskin.classify.train import ClassifierData
    from fairskin.data.stream import decode_local

    train, val, test = (decode_local(real, splits=[s]) for s in ("train", "val", "test"))
    return ClassifierData(train, val, test, pool=decode_local(pool, splits=["pool"]))


def _run(trial, inputs, memo, data):
    from fairskin.tune.trainable import run_trial

    config, _, _, space = inputs
    reports: list[dict] = []
    run_trial(trial, data, space, config.classifier, reports.append, memo=memo)
    return reports


def _figures(reports: list[dict]) -> list[dict]:
    """Reports less their timings (``epoch_seconds``: how long that training took, replayed as recorded)."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in reports]


def _never():
    raise AssertionError("a replayed trial read its data")


def test_a_replayed_trial_reports_what_training_reports_and_a_changed_input_trains(study_inputs, tmp_path):
    config, pools, real, _ = study_inputs
    resources = {"CPU": 0.5, "GPU": 0.0}
    memo = _memo(tmp_path, {"vanilla": pools["vanilla"]}, real, resources)
    trial = {"variant": "vanilla", "mode": "resample", "seed": 0}

    trained = _run(trial, study_inputs, None, _data(real, pools["vanilla"]))  # no memo: the reference
    first = _run(trial, study_inputs, memo, lambda: _data(real, pools["vanilla"]))
    assert len(trained) == config.classifier.epochs and "test_accuracy" in trained[-1]
    assert [r.pop(REPLAYED, None) for r in (trained[-1], first[-1])] == [0.0, 0.0]
    assert _figures(first) == _figures(trained)
    assert len(list((tmp_path / MEMO_DIR).glob("*.json"))) == 1

    # A later study on the same runs root: the same trial under another pool id replays, epoch by epoch.
    later = _memo(tmp_path, {"vanilla-r0": pools["vanilla"]}, real, resources)
    replayed = _run({**trial, "variant": "vanilla-r0"}, study_inputs, later, _never)
    assert replayed[-1].pop(REPLAYED) == 1.0
    assert replayed == first  # the stored reports, timings included
    assert _figures(replayed) == _figures(trained)

    # What would change the trial's figures trains: another seed, other images under the same pool id, other
    # CPUs per trial (torch's threads follow them).
    cases = [
        ("another seed", {**trial, "seed": 1}, memo, pools["vanilla"]),
        ("other images", trial, _memo(tmp_path, {"vanilla": pools["other"]}, real, resources), pools["other"]),
        ("other CPUs", trial, _memo(tmp_path, {"vanilla": pools["vanilla"]}, real, {"CPU": 1.0}), pools["vanilla"]),
    ]
    for why, changed, m, pool in cases:
        called = []

        def data(pool=pool, why=why):
            called.append(why)
            return _data(real, pool)

        out = _run(changed, study_inputs, m, data)
        assert called == [why] and out[-1][REPLAYED] == 0.0, why
        if why == "other images":
            assert _figures(out) != _figures(first), "the two pools train to the same figures: the case shows nothing"
    assert len(list((tmp_path / MEMO_DIR).glob("*.json"))) == 4


def test_an_unreadable_or_unfinished_memo_trains_again(study_inputs, tmp_path):
    config, pools, real, _ = study_inputs
    memo = _memo(tmp_path, {"vanilla": pools["vanilla"]}, real, {"CPU": 0.5, "GPU": 0.0})
    trial = {"variant": "vanilla", "mode": "random", "seed": 0}
    _run(trial, study_inputs, memo, lambda: _data(real, pools["vanilla"]))
    (stored,) = (tmp_path / MEMO_DIR).glob("*.json")
    record = json.loads(stored.read_text())
    assert record["inputs"]["pool"] == memo.pools["vanilla"] and record["inputs"]["trial"] == {
        "mode": "random",
        "seed": 0,
    }

    stored.write_text(stored.read_text()[:40])  # cut short, as by a full disk
    called = []
    out = _run(trial, study_inputs, memo, lambda: called.append(1) or _data(real, pools["vanilla"]))
    assert called == [1] and out[-1][REPLAYED] == 0.0
    assert json.loads(stored.read_text())["reports"][-1]["test_accuracy"] == out[-1]["test_accuracy"]
