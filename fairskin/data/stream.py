"""Ray Data streams of the level-1 weighted training set.

Design (see FIELD-NOTES.md: a naive read -> decode -> batch pipeline ran at 0.05-0.1x of a
torch DataLoader here, because it decoded every PNG every epoch):

1. **Decode once.** The shards are read and decoded by Ray Data (``read_parquet`` +
   ``map_batches``, parallel across the cluster), and the training rows' arrays are put in
   the object store once (:class:`DecodedSet`).
2. **Draw on the driver.** The whole run is one sequence of global positions
   0, 1, 2, ...: position p belongs to epoch p // epoch_size, and its row is that epoch's
   draw (a pure function of (seed, epoch)). Resuming at optimizer step s starts at
   position s x global_batch; worker ``rank`` of ``world`` reads positions p with
   p % world == rank, i.e. ``ids[rank::world]``.
3. **Stream the plan, gather in the consumer.** The plan (ints only) is a Ray dataset of
   small blocks; the consumer (a Train worker, or ``iter_batches``) gathers each batch's rows
   from a zero-copy view of the object store's arrays and converts uint8 NHWC to float NCHW
   in [-1, 1], in ``iter_torch_batches``' prefetch threads. The bulk data crosses the object
   store once. (``dataset()`` instead gathers in Ray Data tasks and ships the pixels: simpler
   for ad-hoc use, about 50x slower here.)

With one consumer and ``preserve_order`` the stream is deterministic: the same config
and seed give the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.data import DataError
from fairskin.data.sampling import EpochPlan, WeightedSampler

PLAN_BLOCK_ROWS = 256


# --------------------------------------------------------------------------- decoded set


@dataclass
class DecodedSet:
    """Decoded rows of one split: pixels and labels, aligned by row.

    ``pixels``: uint8 (N, H, W, 3). ``group_id``/``disease_id``/``subclass_id``: int64 (N,),
    indices into ``groups``/``diseases`` and group_id * len(diseases) + disease_id.
    """

    pixels: np.ndarray
    meta: pd.DataFrame
    groups: tuple[str, ...]
    diseases: tuple[str, ...]

    @property
    def group_id(self) -> np.ndarray:
        return self.meta["group"].map({g: i for i, g in enumerate(self.groups)}).to_numpy(np.int64)

    @property
    def disease_id(self) -> np.ndarray:
        return self.meta["disease"].map({d: i for i, d in enumerate(self.diseases)}).to_numpy(np.int64)

    @property
    def subclass_id(self) -> np.ndarray:
        return self.group_id * len(self.diseases) + self.disease_id

    def __len__(self) -> int:
        return len(self.meta)

    def without_group(self, group: str) -> DecodedSet:
        """The rows of every group but ``group`` (same ``groups`` / ``diseases``, so subclass ids
        and prompts keep their meaning); for the ``control_drop_<group>`` generators."""
        keep = (self.meta["group"] != group).to_numpy()
        return DecodedSet(self.pixels[keep], self.meta[keep].reset_index(drop=True), self.groups, self.diseases)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-row arrays a gather needs."""
        return {"pixels": self.pixels, "group": self.group_id, "disease": self.disease_id, "subclass": self.subclass_id}


@dataclass
class ArraySet:
    """Any per-row arrays to stream (e.g. cached VAE latents), with each row's subclass id."""

    subclass_id: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.subclass_id)

    def arrays(self) -> dict[str, np.ndarray]:
        return self.columns


def _decode_batch(batch: dict[str, np.ndarray], splits: Sequence[str]) -> dict[str, np.ndarray]:
    from fairskin.data.images import decode_png

    keep = np.isin(batch["split"], list(splits))
    out = {k: v[keep] for k, v in batch.items() if k != "image"}
    images = [decode_png(bytes(b)) for b in batch["image"][keep]]
    out["pixels"] = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    return out


def decode_with_ray(
    shard_dir: Path, splits: Sequence[str] = ("train",), *, num_cpus: float = 0.5, verify: bool = True
) -> DecodedSet:
    """Read and decode a shard folder with Ray Data; rows come back in shard order.

    Labels and checksums are verified on the driver first (cheap: no decoding), so a bad
    shard fails with a message naming it before any Ray work starts.
    """
    import ray.data

    from fairskin.data.shards import METADATA_COLUMNS, read_shard, shard_paths, verify_table, vocabulary_of

    vocab = vocabulary_of(shard_dir)
    paths = shard_paths(shard_dir)
    if verify:
        for path in paths:
            verify_table(read_shard(path, vocab, verify=False), vocab, path, decode=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.read_parquet([str(p) for p in paths]).map_batches(
        _decode_batch, fn_kwargs={"splits": list(splits)}, batch_size=64, num_cpus=num_cpus, batch_format="numpy"
    )
    pixels, metas = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if len(batch["id"]) == 0:
            continue
        pixels.append(batch["pixels"])
        metas.append(pd.DataFrame({c: batch[c] for c in METADATA_COLUMNS}))
    if not pixels:
        raise DataError(f"{shard_dir}: no rows in split(s) {list(splits)}")
    return DecodedSet(np.concatenate(pixels), pd.concat(metas, ignore_index=True), vocab.groups, vocab.diseases)


def decode_local(shard_dir: Path, splits: Sequence[str] = ("train",), verify: bool = True) -> DecodedSet:
    """Same as :func:`decode_with_ray`, in this process (for single-process tools and tests)."""
    from fairskin.data.shards import load_decoded, vocabulary_of

    vocab = vocabulary_of(shard_dir)
    pixels, meta = load_decoded(shard_dir, verify=verify, splits=splits)
    if len(meta) == 0:
        raise DataError(f"{shard_dir}: no rows in split(s) {list(splits)}")
    return DecodedSet(pixels, meta, vocab.groups, vocab.diseases)


# --------------------------------------------------------------------------- the run's plan


class RunPlan:
    """Global positions of a training run mapped to (row, loss weight), epoch by epoch."""

    def __init__(self, sampler: WeightedSampler):
        self.sampler = sampler
        self.epoch_size = sampler.epoch_size
        self._cache: dict[int, EpochPlan] = {}

    def _epoch(self, epoch: int) -> EpochPlan:
        if epoch not in self._cache:
            self._cache = {epoch: self.sampler.epoch(epoch)}  # keep one epoch: plans are cheap to redo
        return self._cache[epoch]

    def positions(self, start: int, stop: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Global positions in [start, stop) that worker ``rank`` of ``world`` reads."""
        first = start + ((rank - start) % world)
        return np.arange(first, stop, world, dtype=np.int64)

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, loss weights float32) for global positions."""
        rows = np.empty(len(positions), np.int64)
        weights = np.empty(len(positions), np.float32)
        epochs = positions // self.epoch_size
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            plan = self._epoch(int(epoch))
            offsets = positions[mask] - epoch * self.epoch_size
            rows[mask] = plan.rows[offsets]
            weights[mask] = plan.loss_weights[offsets]
        return rows, weights


# --------------------------------------------------------------------------- Ray Data stream


def _gather_rows(batch: dict[str, np.ndarray], arrays_ref: list) -> dict[str, np.ndarray]:
    """Ray Data task: gather one plan block's rows from the decoded arrays (a zero-copy view)."""
    import ray

    return gather_batch(ray.get(arrays_ref[0]), batch)  # wrapped in a list: refs in fn_kwargs are not resolved


def to_model_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Numpy batch -> torch: ``pixels`` float32 (B, 3, H, W) in [-1, 1]; labels int64; weight float32."""
    import torch

    pixels = torch.from_numpy(np.array(batch["pixels"], copy=True))  # Ray's buffers are read-only
    out: dict[str, Any] = {"pixels": pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)}
    for name in ("group", "disease", "subclass", "row", "position"):
        if name in batch:
            out[name] = torch.from_numpy(np.array(batch[name], dtype=np.int64))
    out["weight"] = torch.from_numpy(np.array(batch["weight"], dtype=np.float32))
    return out


def gather_batch(arrays: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of a plan batch (position, row, weight) gathered from the per-row arrays (numpy)."""
    rows = np.asarray(batch["row"])
    out = {name: values[rows] for name, values in arrays.items()}
    out.update(row=rows, position=np.asarray(batch["position"]), weight=np.asarray(batch["weight"]))
    return out


def _gather_collate(arrays_ref):
    """A collate function for ``iter_torch_batches`` over a plan dataset: gathers each batch's
    rows from the object store's arrays (a zero-copy view in this process) and converts them to
    torch, in Ray's prefetch threads."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class GatherCollate(NumpyBatchCollateFn):
        def __init__(self):
            self._arrays = None

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            if self._arrays is None:
                import ray

                self._arrays = ray.get(arrays_ref)
            return to_model_batch(gather_batch(self._arrays, batch))

    return GatherCollate()


class WeightedStream:
    """The level-1 weighted stream of one decoded training set.

    ``dataset(start, stop, rank, world)`` is a Ray Dataset of the rows at global positions
    [start, stop) read by worker ``rank``; ``iter_batches`` wraps it into torch batches.
    """

    def __init__(
        self,
        decoded: DecodedSet | ArraySet,
        scheme: str = "none",
        apply: str = "sampler",
        seed: int = 0,
        *,
        gather_cpus: float = 0.25,
        plan_block_rows: int = PLAN_BLOCK_ROWS,
    ):
        import ray

        self.decoded = decoded
        self.sampler = WeightedSampler(decoded.subclass_id, scheme, apply, seed)  # type: ignore[arg-type]
        self.plan = RunPlan(self.sampler)
        self.gather_cpus = gather_cpus
        self.plan_block_rows = plan_block_rows
        self._arrays_ref = ray.put(decoded.arrays())

    @property
    def epoch_size(self) -> int:
        return self.plan.epoch_size

    def plan_table(self, start: int, stop: int, rank: int = 0, world: int = 1) -> pd.DataFrame:
        """The (position, row, weight) rows worker ``rank`` reads, as a frame (driver side)."""
        positions = self.plan.positions(start, stop, rank, world)
        rows, weights = self.plan.lookup(positions)
        return pd.DataFrame({"position": positions, "row": rows, "weight": weights})

    def _plan_blocks(self, start: int, stop: int, rank: int = 0, world: int = 1) -> list:
        import pyarrow as pa

        table = self.plan_table(start, stop, rank, world)
        if table.empty:
            raise ValueError(f"no positions in [{start}, {stop}) for rank {rank} of {world}")
        return [
            pa.Table.from_pandas(table.iloc[i : i + self.plan_block_rows], preserve_index=False)
            for i in range(0, len(table), self.plan_block_rows)
        ]

    def plan_dataset(self, start: int, stop: int):
        """Ray Dataset of the run's plan only (position, row, weight: ints and floats), in order.

        For Ray Train: every worker reads it whole (``DataConfig(datasets_to_split=[])``), takes
        the positions of its rank from each global batch and gathers its rows from the arrays
        (:meth:`arrays_ref`) in its own process, so the bulk data crosses the object store once.
        """
        import ray.data

        ray.data.DataContext.get_current().execution_options.preserve_order = True
        return ray.data.from_arrow(self._plan_blocks(start, stop))

    @property
    def arrays_ref(self):
        """Object ref of the per-row arrays (put once)."""
        return self._arrays_ref

    def dataset(self, start: int, stop: int, rank: int = 0, world: int = 1):
        """Ray Dataset of gathered rows (uint8 pixels, labels, weight, position), in position order."""
        import ray.data

        blocks = self._plan_blocks(start, stop, rank, world)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        return ray.data.from_arrow(blocks).map_batches(
            _gather_rows,
            fn_kwargs={"arrays_ref": [self._arrays_ref]},
            batch_size=None,
            num_cpus=self.gather_cpus,
            batch_format="numpy",
        )

    def iter_batches(
        self,
        batch_size: int,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world: int = 1,
        prefetch_batches: int = 4,
    ) -> Iterator[dict[str, Any]]:
        """Torch batches of ``batch_size`` rows for worker ``rank`` (default: one epoch from ``start``).

        Ray Data streams the plan; the rows are gathered in this process (what a Train worker does).
        """
        import ray.data

        stop = start + self.epoch_size if stop is None else stop
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        ds = ray.data.from_arrow(self._plan_blocks(start, stop, rank, world))
        yield from ds.iter_torch_batches(
            batch_size=batch_size, collate_fn=_gather_collate(self._arrays_ref), prefetch_batches=prefetch_batches
        )


def iter_local_batches(decoded: DecodedSet, plan: EpochPlan, batch_size: int) -> Iterator[dict[str, Any]]:
    """The same batches as the stream, gathered in this process (no Ray): for single-process use."""
    arrays = decoded.arrays()
    for i in range(0, len(plan.rows), batch_size):
        rows = plan.rows[i : i + batch_size]
        batch = {name: values[rows] for name, values in arrays.items()}
        batch.update(
            row=rows,
            weight=plan.loss_weights[i : i + batch_size],
            position=np.arange(i, i + len(rows)) + plan.epoch * len(plan.rows),
        )
        yield to_model_batch(batch)
