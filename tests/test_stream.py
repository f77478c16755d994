"""The level-1 Ray Data stream, on the session's Ray head."""

import numpy as np
import pytest
import torch

from fairskin.data.stream import WeightedStream, decode_local, decode_with_ray, iter_local_batches

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def decoded(prepared_smoke, ray_session):
    _, prepare = prepared_smoke
    return decode_with_ray(prepare.path / "shards")


def test_ray_decode_equals_local_decode(decoded, prepared_smoke):
    _, prepare = prepared_smoke
    local = decode_local(prepare.path / "shards")
    assert np.array_equal(decoded.pixels, local.pixels)
    assert list(decoded.meta["id"]) == list(local.meta["id"])
    assert set(decoded.meta["split"]) == {"train"}


def test_stream_batches_are_model_ready_and_follow_the_draw(decoded):
    stream = WeightedStream(decoded, "cbrs", "sampler", seed=4)
    batches = list(stream.iter_batches(batch_size=16))
    first = batches[0]
    assert first["pixels"].shape == (16, 3, 32, 32) and first["pixels"].dtype == torch.float32
    assert -1.0 <= float(first["pixels"].min()) and float(first["pixels"].max()) <= 1.0
    rows = torch.cat([b["row"] for b in batches]).numpy()
    assert np.array_equal(rows, stream.sampler.epoch(0).rows)  # the driver's (seed, epoch) draw, in order
    assert torch.all(torch.cat([b["weight"] for b in batches]) == 1.0)  # sampler mode: weights not applied twice
    # Same pixels and labels as gathering the same plan in-process.
    local = list(iter_local_batches(decoded, stream.sampler.epoch(0), 16))
    for a, b in zip(batches, local):
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["subclass"], b["subclass"])
    expected_group = decoded.group_id[rows]
    assert np.array_equal(torch.cat([b["group"] for b in batches]).numpy(), expected_group)


def test_workers_read_disjoint_rank_slices_and_resume_mid_run(decoded):
    stream = WeightedStream(decoded, "sqrs", "loss", seed=1)
    n = stream.epoch_size
    start, stop = n - 10, n + 30  # crosses into epoch 1, as a resumed run would
    seen = {}
    for rank in range(2):
        ds = stream.dataset(start, stop, rank=rank, world=2)
        rows = ds.take_all()
        seen[rank] = np.array([r["position"] for r in rows])
        assert np.all(seen[rank] % 2 == rank)
    assert sorted(np.concatenate(list(seen.values()))) == list(range(start, stop))
    table = stream.plan_table(start, stop)
    assert np.array_equal(table["row"].to_numpy()[:10], stream.sampler.epoch(0).rows[-10:])
    assert np.array_equal(table["row"].to_numpy()[10:], stream.sampler.epoch(1).rows[:30])
    assert np.allclose(table["weight"].to_numpy()[10:], stream.sampler.epoch(1).loss_weights[:30])
