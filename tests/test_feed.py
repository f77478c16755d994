"""The fine-tune's feed (fairskin.diffusion.feed): rank split, resume skip, prefetch order and errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fairskin.diffusion.feed import Prefetch, StepInputs, flips_of, plan_read_rows, plan_steps, step_inputs

N, C, H = 12, 4, 2


def _arrays():
    return {
        "subclass": np.arange(N) % 5,
        "latents": np.arange(N * 2 * C * H * H, dtype=np.float32).reshape(N, 2, C, H, H),
    }


def _plan(steps: int, batch: int):
    rng = np.random.default_rng(0)
    for s in range(steps):
        positions = np.arange(s * batch, (s + 1) * batch)
        yield {"position": positions, "row": rng.integers(0, N, batch), "weight": rng.random(batch)}


def test_ranks_split_a_global_batch_and_gather_the_flipped_latents():
    arrays, batch = _arrays(), next(_plan(1, 4))
    parts = [step_inputs(batch, arrays, rank=r, world=2, seed=7, global_batch=4) for r in range(2)]
    assert sorted(np.concatenate([p.rows for p in parts]).tolist()) == sorted(batch["row"].tolist())
    for part, rank in zip(parts, range(2)):
        mine = batch["position"] % 2 == rank
        flips = flips_of(batch["position"][mine], 7)
        assert np.array_equal(part.flips, flips) and part.step == 0
        assert torch.equal(part.latents, torch.from_numpy(arrays["latents"][batch["row"][mine], flips]))
        assert torch.allclose(part.weights, torch.from_numpy(batch["weight"][mine].astype(np.float32)))


def test_a_resumed_plan_starts_at_its_step_and_the_prefetch_keeps_order():
    arrays = _arrays()
    direct = list(plan_steps(_plan(6, 4), arrays, rank=0, world=1, seed=1, global_batch=4, start_step=2))
    assert [s.step for s in direct] == [2, 3, 4, 5]
    seen_threads = set()

    def source():
        for item in plan_steps(_plan(6, 4), arrays, rank=0, world=1, seed=1, global_batch=4, start_step=2):
            seen_threads.add(threading.current_thread().name)
            yield item

    ahead = list(Prefetch(source(), "cpu", depth=2, background=True))  # a CUDA worker's feed
    assert [s.step for s in ahead] == [2, 3, 4, 5] and seen_threads == {"feed-prefetch"}
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(ahead, direct))
    # On a CPU device (the default there) the same items are made in the consumer's thread: no thread
    # competing with the step's for the worker's cores.
    seen_threads.clear()
    inline = Prefetch(source(), "cpu", depth=2)
    assert not inline.background and inline._thread is None
    assert [s.step for s in inline] == [2, 3, 4, 5] and seen_threads == {threading.current_thread().name}


def test_plan_rows_read_many_steps_at_a_time_split_into_the_same_steps():
    """The worker reads plan_read_rows(B) rows per Ray Data batch (its per-batch cost was the feed's largest host
    cost); the steps, and a resume inside a block, are those of reading one global batch at a time."""
    arrays, batch = _arrays(), 4
    assert plan_read_rows(batch) % batch == 0 and plan_read_rows(batch) > batch
    one = list(_plan(7, batch))
    blocks = [{k: np.concatenate([b[k] for b in one[i : i + 3]]) for k in one[0]} for i in range(0, 7, 3)]  # 3, 3, 1
    for start in (0, 4):
        single = list(plan_steps(iter(one), arrays, rank=1, world=2, seed=3, global_batch=batch, start_step=start))
        split = list(plan_steps(iter(blocks), arrays, rank=1, world=2, seed=3, global_batch=batch, start_step=start))
        assert [s.step for s in split] == [s.step for s in single] == list(range(start, 7))
        assert all(
            np.array_equal(a.rows, b.rows) and torch.equal(a.latents, b.latents) and torch.equal(a.weights, b.weights)
            for a, b in zip(split, single)
        )
    ragged = {k: v[:6] for k, v in blocks[0].items()}
    with pytest.raises(ValueError, match="6 rows .* global batches of 4"):
        list(plan_steps(iter([ragged]), arrays, rank=0, world=1, seed=3, global_batch=batch))


def test_an_error_in_the_feed_reaches_the_training_loop_and_close_stops_the_thread():
    def broken():
        yield StepInputs(0, np.zeros(1, np.int64), torch.ones(1), torch.zeros(1, dtype=torch.long), np.zeros(1))
        raise ValueError("shard 3 is unreadable")

    feed = Prefetch(broken(), "cpu", background=True)
    with pytest.raises(ValueError, match="shard 3"):
        list(feed)
    endless = Prefetch(
        iter(lambda: StepInputs(0, np.zeros(1), torch.ones(1), torch.zeros(1), np.zeros(1)), None), background=True
    )
    next(iter(endless))
    endless.close()
    assert not endless._thread.is_alive()
