"""Latent shards streamed within a memory budget (fairskin.data.latent_shards): what the stream draws (weights,
mixing, determinism, resume), what it holds (the budget), and what it refuses (bad shards). No Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from fairskin.data import DataError
from fairskin.data.latent_shards import INDEX_FILE, LatentShards, LatentShardWriter, write_latent_shards
from fairskin.data.latent_stream import LatentStream, ShardPlan, batch_mixing_pvalue, subclass_frequency_pvalue
from fairskin.data.sampling import WeightedSampler
from fairskin.diffusion.feed import Prefetch, StepInputs, flips_of

SHAPE = (2, 4, 16, 16)  # 8 KB a row
ROW_BYTES = int(np.prod(SHAPE)) * 4
COUNTS = np.array([600, 220, 90, 30, 8])  # skewed, like the skin-tone subclasses


def _source(seed: int = 0):
    """Training rows in arbitrary order: ids, subclass, latents whose values encode (row id, flip)."""
    rng = np.random.default_rng(seed)
    subclass = rng.permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
    ids = np.arange(len(subclass)) + 1000
    latents = rng.standard_normal((len(ids), *SHAPE)).astype(np.float32)
    latents[:, :, 0, 0, 0] = ids[:, None] + np.array([0.0, 0.5])  # row id and flip, readable in every row
    return ids, subclass, latents


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    ids, subclass, latents = _source()
    root = tmp_path_factory.mktemp("latents") / "set"
    shards = write_latent_shards(root, ids, subclass, latents, rows_per_shard=32, rows_per_group=4)
    return shards, ids, subclass, latents


BUDGET = 1536 * 1024  # the set is 5x larger


def _stream(shards, seed=3, scheme="sqrs", apply="sampler", batch=8, budget=BUDGET, **kw):
    return LatentStream(shards, scheme=scheme, apply=apply, seed=seed, global_batch=batch, budget_bytes=budget, **kw)


def _counts(batches, subclasses=len(COUNTS)) -> np.ndarray:
    return np.array([np.bincount(b["subclass"], minlength=subclasses) for b in batches])


# --------------------------------------------------------------------------- layout and round trip


def test_rows_come_back_as_written_sorted_by_subclass_in_row_groups(shard_set):
    shards, ids, subclass, latents = shard_set
    assert shards.rows == len(ids) and shards.shape == SHAPE
    assert list(shards.subclass_counts) == list(COUNTS) and len(shards.files) == -(-len(ids) // 32)
    first = pq.ParquetFile(shards.files[0])
    assert first.metadata.num_row_groups == 8 and first.metadata.row_group(0).num_rows == 4
    stored = pq.read_table(shards.files[0])
    assert stored.schema.field("latents").type == pa.fixed_shape_tensor(pa.float32(), list(SHAPE))
    assert np.all(np.diff(stored.column("subclass").to_numpy()) >= 0)
    by_id = {i: k for k, i in enumerate(ids)}
    for b in _stream(shards).batches(0, 20):
        src = np.array([by_id[i] for i in b["row"]])
        assert np.array_equal(b["latents"], latents[src, b["flip"]])  # the drawn flip of the drawn row
        assert np.array_equal(b["subclass"], subclass[src])
        assert np.array_equal(b["flip"], flips_of(b["position"], 3))  # the feed's own flip rule


def test_steps_are_the_feeds_step_inputs_and_run_through_prefetch(shard_set):
    shards = shard_set[0]
    stream = _stream(shards, batch=8, world=2, rank=1)
    direct = list(stream.batches(4, 10))
    with Prefetch(stream.steps(4, 10), "cpu", depth=2) as feed:
        steps = list(feed)
    assert [s.step for s in steps] == list(range(4, 10)) and all(isinstance(s, StepInputs) for s in steps)
    for s, b in zip(steps, direct):
        assert s.latents.shape == (4, *SHAPE[1:]) and s.latents.dtype == torch.float32
        assert torch.equal(s.latents, torch.from_numpy(b["latents"])) and np.array_equal(s.rows, b["row"])
        assert s.subclass.dtype == torch.int64 and s.weights.dtype == torch.float32


def test_ranks_split_each_global_batch(shard_set):
    shards = shard_set[0]
    whole = list(_stream(shards, batch=8).batches(0, 5))
    parts = [list(_stream(shards, batch=8, rank=r, world=2).batches(0, 5)) for r in range(2)]
    for step, b in enumerate(whole):
        for r in range(2):
            assert np.array_equal(parts[r][step]["position"], b["position"][r::2])
            assert np.array_equal(parts[r][step]["row"], b["row"][r::2])


def test_any_pyarrow_filesystem(tmp_path):
    ids, subclass, latents = _source(1)
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    write_latent_shards(
        (fs, "remote/set"), ids[:100], subclass[:100], latents[:100], rows_per_shard=32, rows_per_group=4
    )
    via_fs = list(_stream((fs, "remote/set")).batches(0, 3))
    via_uri = list(_stream(f"file://{tmp_path}/remote/set").batches(0, 3))
    assert all(np.array_equal(a["latents"], b["latents"]) for a, b in zip(via_fs, via_uri))


# --------------------------------------------------------------------------- what the stream draws


def test_plan_has_the_weighted_samplers_probabilities(shard_set):
    shards, _, subclass, _ = shard_set
    for scheme in ("none", "cbrs", "sqrs"):
        plan = ShardPlan(shards.subclass_counts, scheme, "sampler", 0)
        expected = WeightedSampler(np.sort(subclass), scheme, "sampler").subclass_probabilities().to_numpy()
        assert np.allclose(plan.subclass_probabilities, expected)


@pytest.mark.parametrize("scheme", ["cbrs", "sqrs"])
def test_epoch_subclass_frequencies_follow_the_weights(shard_set, scheme):
    shards = shard_set[0]
    stream = _stream(shards, scheme=scheme)
    counts = _counts(stream.batches()).sum(0)
    assert counts.sum() == stream.epoch_steps * 8
    assert subclass_frequency_pvalue(counts, stream.plan.subclass_probabilities) > 0.001
    # The test has power: the same draws against the unweighted frequencies fail.
    assert subclass_frequency_pvalue(counts, COUNTS / COUNTS.sum()) < 0.001


def test_batches_are_mixed_independent_weighted_draws(shard_set):
    shards = shard_set[0]
    stream = _stream(shards, scheme="sqrs", batch=8)
    batches = list(stream.batches(0, 4 * stream.epoch_steps))
    probs = stream.plan.subclass_probabilities
    counts = _counts(batches)
    assert batch_mixing_pvalue(counts, probs) > 0.001
    # The same rows emitted one subclass at a time (a sorted stream) pass the totals but fail mixing ...
    labels = np.sort(np.concatenate([b["subclass"] for b in batches])).reshape(len(batches), 8)
    sorted_counts = _counts([{"subclass": row} for row in labels])
    assert np.array_equal(sorted_counts.sum(0), counts.sum(0))
    assert batch_mixing_pvalue(sorted_counts, probs) < 0.001
    # ... and so do batches shuffled only within windows of a few steps after sorting (subclass runs).
    runs = np.sort(np.concatenate([b["subclass"] for b in batches]).reshape(-1, 64), axis=1).reshape(-1, 8)
    assert batch_mixing_pvalue(_counts([{"subclass": row} for row in runs]), probs) < 0.001
    # Pure multinomial batches pass: the statistic is calibrated, not merely permissive.
    rng = np.random.default_rng(5)
    passes = [
        batch_mixing_pvalue(rng.multinomial(8, probs, size=len(batches)), probs, seed=s) > 0.001 for s in range(5)
    ]
    assert all(passes)


def test_the_stream_is_a_pure_function_of_seed_and_position(shard_set):
    shards = shard_set[0]
    a = list(_stream(shards, seed=11).batches(0, 30))
    b = list(_stream(shards, seed=11, budget=4 * BUDGET).batches(0, 30))  # another budget: other windows
    assert _stream(shards, budget=4 * BUDGET).window_steps != _stream(shards).window_steps
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in ("position", "row", "flip", "weight", "latents"))
    c = list(_stream(shards, seed=12).batches(0, 30))
    assert not all(np.array_equal(x["row"], z["row"]) for x, z in zip(a, c))


def test_a_resumed_stream_gives_the_full_runs_later_batches(shard_set):
    shards = shard_set[0]
    stream = _stream(shards, seed=4)
    full = list(stream.batches(0, 2 * stream.epoch_steps))  # crosses an epoch boundary and plan blocks
    for k in (1, 37, stream.epoch_steps - 1, stream.epoch_steps + 3):
        tail = list(_stream(shards, seed=4).batches(k, 2 * stream.epoch_steps))
        assert [t["step"] for t in tail] == list(range(k, 2 * stream.epoch_steps))
        assert all(
            np.array_equal(t["row"], f["row"]) and np.array_equal(t["latents"], f["latents"])
            for t, f in zip(tail, full[k:])
        )


def test_loss_mode_is_a_permutation_per_epoch_with_loss_weights(shard_set):
    shards, ids, subclass, _ = shard_set
    stream = _stream(shards, scheme="cbrs", apply="loss", batch=8)
    n = shards.rows - shards.rows % 8
    rows = np.concatenate([b["row"] for b in stream.batches()])
    assert len(rows) == n and len(set(rows.tolist())) == n  # each row at most once in an epoch
    weights = np.concatenate([b["weight"] for b in stream.batches()])
    expected = WeightedSampler(subclass, "cbrs", "loss").weights
    by_id = {i: k for k, i in enumerate(ids)}
    assert np.allclose(weights, expected[[by_id[r] for r in rows]])
    assert np.allclose(stream.plan.sample_weight, [expected[subclass == k][0] for k in range(len(COUNTS))])


# --------------------------------------------------------------------------- what it holds


def test_decoded_bytes_held_never_exceed_the_budget_on_a_set_many_times_larger(shard_set):
    shards = shard_set[0]
    budget = BUDGET
    assert shards.nbytes >= 4 * budget
    stream = _stream(shards, budget=budget)
    held = []
    for _ in stream.batches(0, 2 * stream.epoch_steps):
        held.append(stream.reader.held_bytes)
    assert max(held) == stream.reader.peak_held_bytes <= stream.reader.cache_bytes <= budget
    assert stream.reader.bytes_read > 2 * stream.reader.cache_bytes  # it streamed: groups were evicted and reread
    assert stream.window_steps >= 1


def test_a_budget_below_one_step_is_refused_with_the_numbers(shard_set):
    with pytest.raises(
        ValueError,
        match=r"memory budget 0.5 MB is too small for one step: 8 rows per step each "
        r"read in a row group of 4 rows .*need at least 1.\d MB",
    ):
        _stream(shard_set[0], budget=512 * 1024)


# --------------------------------------------------------------------------- what it refuses


def _small_set(root, **kw):
    ids, subclass, latents = _source(2)
    return write_latent_shards(root, ids[:40], subclass[:40], latents[:40], rows_per_shard=16, rows_per_group=4, **kw)


def test_a_shard_with_wrong_columns_or_shape_names_the_file_and_what_was_expected(tmp_path):
    shards = _small_set(tmp_path / "a")
    bad = shards.files[1]
    pq.write_table(pq.read_table(bad).rename_columns(["row_id", "label", "latents"]), bad)
    with pytest.raises(
        DataError,
        match=rf"{bad}: no column 'subclass'; expected columns \['row_id', 'subclass', "
        r"'latents'\]",
    ):
        LatentShards(tmp_path / "a")
    shards = _small_set(tmp_path / "b")
    bad = shards.files[0]
    table = pq.read_table(bad)
    flat = table.column("latents").combine_chunks().to_numpy_ndarray().reshape(len(table), 2, 4, 32, 8)
    pq.write_table(table.set_column(2, "latents", pa.FixedShapeTensorArray.from_numpy_ndarray(flat)), bad)
    with pytest.raises(
        DataError,
        match=rf"{bad}: column 'latents' is .*shape=\[2,4,32,8\].*expected .*"
        r"shape=\[2,4,16,16\].*latent shape \[2, 4, 16, 16\]",
    ):
        LatentShards(tmp_path / "b")


def test_a_shard_with_other_row_groups_or_rows_than_the_index_is_refused(tmp_path):
    shards = _small_set(tmp_path / "a")
    bad = shards.files[0]
    pq.write_table(pq.read_table(bad), bad, row_group_size=16)
    with pytest.raises(
        DataError,
        match=rf"{bad}: 16 rows in row groups of \[16\]; {INDEX_FILE} expects 16 rows "
        r"in groups of 4",
    ):
        LatentShards(tmp_path / "a")
    shards = _small_set(tmp_path / "b")
    (tmp_path / "b" / "latents-00001.parquet").unlink()
    with pytest.raises(DataError, match=r"latents-00001.parquet: listed in latents.json but missing"):
        LatentShards(tmp_path / "b")


def test_rows_out_of_subclass_order_are_caught_when_written_and_when_read(tmp_path):
    ids, subclass, latents = _source(3)
    with pytest.raises(ValueError, match="non-decreasing subclass order"):
        with LatentShardWriter(tmp_path / "w", SHAPE, rows_per_shard=16, rows_per_group=4) as writer:
            writer.add(ids[:10], subclass[:10], latents[:10])
    shards = _small_set(tmp_path / "r")
    # A shard whose rows span two subclasses, rewritten with its subclass column reversed.
    path = next(f for f in shards.files if len(set(pq.read_table(f).column("subclass").to_pylist())) > 1)
    table = pq.read_table(path)
    pq.write_table(
        table.set_column(1, "subclass", pa.array(table.column("subclass").to_numpy()[::-1].copy())),
        path,
        row_group_size=4,
    )
    stream = _stream(tmp_path / "r", batch=4)
    with pytest.raises(DataError, match=rf"{path}, row group \d: subclass ids .* do not match"):
        list(stream.batches(0, stream.epoch_steps))


def test_a_failed_write_leaves_no_set_that_looks_complete(tmp_path):
    ids, subclass, latents = _source(4)
    order = np.argsort(subclass, kind="stable")
    with pytest.raises(RuntimeError, match="killed"):
        with LatentShardWriter(tmp_path / "set", SHAPE, rows_per_shard=16, rows_per_group=4) as writer:
            writer.add(ids[order[:30]], subclass[order[:30]], latents[order[:30]])
            raise RuntimeError("killed")
    assert not (tmp_path / "set" / INDEX_FILE).exists()
    assert not [p for p in (tmp_path / "set").iterdir() if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(DataError, match=f"{INDEX_FILE}: missing; the latent set is incomplete"):
        LatentShards(tmp_path / "set")
    _small_set(tmp_path / "done")
    with pytest.raises(FileExistsError, match="a latent set is already there"):
        _small_set(tmp_path / "done")
    index = json.loads((tmp_path / "done" / INDEX_FILE).read_text())
    assert _small_set(tmp_path / "done", overwrite=True).index == index
