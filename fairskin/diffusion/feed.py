"""The fine-tune's feed: from the weighted plan's rows to a step's tensors on the device, off the critical path.

The plan (which row, with which weight, at which global position) streams from Ray Data
(``WeightedStream.plan_dataset`` read through ``get_dataset_shard(...).iter_batches``); this module
turns each global batch of plan rows into one rank's :class:`StepInputs` (and, in the worker, the
step's random draws, which are pure functions of (seed, step, rank) and so can be made ahead):

    plan batch -> this rank's rows, weights, subclass ids, flips -> gathered latents (or pixels)
               -> pinned host memory -> device (non_blocking)

:func:`step_inputs` is the pure host work; on a GPU worker :class:`Prefetch` runs it ``depth`` steps
ahead in a background thread, so the step never waits for a gather, a draw or a host-to-device copy (on a
CPU device, where the step holds every core, it runs in the loop's thread: see :class:`Prefetch`). The
Ray Train worker (:func:`fairskin.diffusion.finetune.train_loop_per_worker`) and
``benchmarks/stream.py`` use exactly this code. Random draws come from per-step generators
(:func:`fairskin.diffusion.step.step_generator`, seeded by (seed, step[, rank])), so making them in
the feed's thread cannot change a run's draws, and a resumed run sees the same batches.

No ray, mlflow or pydantic import (the GPU benchmark machine has none of them).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class StepInputs:
    """One rank's share of one global batch.

    ``step``: 0-based global step; ``rows`` int64 (b,) row ids into the cached arrays; ``weights``
    float32 (b,); ``subclass`` int64 (b,); ``flips`` 0/1 (b,); ``latents`` float32 (b, C, h, w) when
    latents are cached, else ``pixels`` uint8 (b, H, W, 3) for the encode-every-step path.
    """

    step: int
    rows: np.ndarray
    weights: torch.Tensor
    subclass: torch.Tensor
    flips: np.ndarray
    latents: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    draws: Any = None  # the step's random inputs (fairskin.diffusion.step.StepDraws), when drawn ahead

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StepInputs:
        """The same inputs with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)
        return StepInputs(
            self.step,
            self.rows,
            move(self.weights),
            move(self.subclass),
            self.flips,
            move(self.latents),
            move(self.pixels),
            self.draws,
        )

    def pin(self) -> StepInputs:
        """The same inputs in page-locked host memory (for asynchronous copies to a CUDA device)."""
        pin = lambda t: None if t is None else t.pin_memory()
        return StepInputs(
            self.step,
            self.rows,
            pin(self.weights),
            pin(self.subclass),
            self.flips,
            pin(self.latents),
            pin(self.pixels),
            self.draws,
        )


def flips_of(positions: np.ndarray, seed: int) -> np.ndarray:
    """0/1 per global plan position: which horizontal flip of its image the step sees (a pure function
    of (seed, position), so every rank and every resumed run agrees)."""
    return (np.random.default_rng(np.random.SeedSequence([seed, 99])).integers(0, 2**31, size=1)[0] ^ positions) & 1


def step_inputs(
    batch: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    *,
    rank: int,
    world: int,
    seed: int,
    global_batch: int,
) -> StepInputs:
    """This rank's :class:`StepInputs` of one global plan batch (columns ``position``, ``row``,
    ``weight``: (B,) each, B = ``global_batch``); rank r takes the positions p with p % world == r."""
    positions = np.asarray(batch["position"])
    mine = positions % world == rank
    rows = np.asarray(batch["row"])[mine]
    flips = flips_of(positions[mine], seed)
    inputs = StepInputs(
        step=int(positions[0]) // global_batch,
        rows=rows,
        weights=torch.from_numpy(np.array(batch["weight"][mine], np.float32)),
        subclass=torch.from_numpy(np.array(arrays["subclass"][rows])),
        flips=flips,
    )
    if "latents" in arrays:
        inputs.latents = torch.from_numpy(np.array(arrays["latents"][rows, flips]))
    else:
        inputs.pixels = torch.from_numpy(np.array(arrays["pixels"][rows]))
    return inputs


# Plan rows are read from Ray Data this many global batches at a time and split here: each
# ``iter_batches`` batch costs the reading thread ~1 ms of fixed work (block slicing, format
# conversion, its own queue), which per step was the feed's largest host cost (issue 15).
PLAN_READ_STEPS = 16


def plan_read_rows(global_batch: int) -> int:
    """How many plan rows one ``iter_batches`` call should hand over (whole global batches)."""
    return global_batch * PLAN_READ_STEPS


def plan_steps(
    batches: Iterable[Mapping[str, np.ndarray]],
    arrays: Mapping[str, np.ndarray],
    *,
    rank: int,
    world: int,
    seed: int,
    global_batch: int,
    start_step: int = 0,
) -> Iterator[StepInputs]:
    """:func:`step_inputs` of every global batch from ``start_step`` on (earlier ones were trained before
    the checkpoint a run resumed from).

    ``batches``: plan rows in position order, each batch holding whole global batches (any multiple of
    ``global_batch`` rows, e.g. :func:`plan_read_rows`); each is split into its steps here.
    """
    for block in batches:
        positions = np.asarray(block["position"])
        if len(positions) % global_batch:
            raise ValueError(
                f"plan batch of {len(positions)} rows (positions {positions[0]}..{positions[-1]}) is not "
                f"whole global batches of {global_batch}"
            )
        for lo in range(0, len(positions), global_batch):
            if int(positions[lo]) < start_step * global_batch:
                continue
            batch = {k: np.asarray(v)[lo : lo + global_batch] for k, v in block.items()}
            yield step_inputs(batch, arrays, rank=rank, world=world, seed=seed, global_batch=global_batch)


class Prefetch:
    """Iterate ``source`` (:class:`StepInputs`) ``depth`` items ahead in a daemon thread, each moved to
    ``device`` (pinned and copied with ``non_blocking`` on CUDA). Exceptions in the thread re-raise in
    the consumer; :meth:`close` (or leaving a ``with`` block) stops the thread.

    ``background`` (default: only when ``device`` is not the CPU): on a CPU device the training step
    already keeps every core the worker holds busy, so a feed thread cannot overlap anything and only
    competes with the step's threads (measured with ``benchmarks/stream.py``: training steps/s 0.88 of
    the DataLoader's with the thread, the host work itself 0.6 ms per step); there the items are made
    in the consumer's thread, in the same order.
    """

    _END = object()

    def __init__(
        self,
        source: Iterable[StepInputs],
        device: torch.device | str = "cpu",
        depth: int = 2,
        background: bool | None = None,
    ):
        self.device = torch.device(device)
        self.background = self.device.type != "cpu" if background is None else background
        self._source = iter(source)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = None
        if self.background:
            self._thread = threading.Thread(target=self._fill, args=(self._source,), daemon=True, name="feed-prefetch")
            self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: Iterator[StepInputs]) -> None:
        cuda = self.device.type == "cuda"
        try:
            for inputs in source:
                if cuda:
                    inputs = inputs.pin().to(self.device, non_blocking=True)
                elif self.device.type != "cpu":
                    inputs = inputs.to(self.device)
                if not self._put(inputs):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[StepInputs]:
        if not self.background:
            for inputs in self._source:
                if self._stop.is_set():
                    return
                yield inputs if self.device.type == "cpu" else inputs.to(self.device)
            return
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
