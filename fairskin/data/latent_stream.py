"""The weighted plan over latent shards and the stream that feeds a fine-tune worker from them within a memory
budget (see :mod:`fairskin.data.latent_shards` for the layout, the plan's semantics and the reading).

No ray, mlflow, pydantic or torch import at module level (the GPU benchmark machine has none of the first three).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from fairskin.data.latent_shards import (
    CACHE_FRACTION,
    FOOTER_GROUP_BYTES,
    MB,
    OPEN_FILES,
    PLAN_BLOCK,
    STEPS_IN_FLIGHT,
    BudgetedReader,
    LatentShards,
)
from fairskin.data.sampling import subclass_weight

# --------------------------------------------------------------------------- the plan


class ShardPlan:
    """The level-1 plan over a subclass-sorted latent set: global position -> (cache row, loss weight).

    ``subclass_counts``: N_s of each subclass in cache order (their rows are consecutive). Every draw is a
    pure function of (seed, position), so any rank, any window size and any resumed run agree.
    """

    def __init__(self, subclass_counts: np.ndarray, scheme: str = "none", apply: str = "sampler", seed: int = 0):
        if apply not in ("sampler", "loss"):
            raise ValueError(f"apply {apply!r}: expected sampler or loss")
        self.counts = np.asarray(subclass_counts, np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.counts)])
        self.rows = int(self.start[-1])
        self.scheme, self.apply, self.seed = scheme, apply, int(seed)
        w = subclass_weight(self.counts, scheme)  # per-sample weight of each subclass
        self.sample_weight = w * (self.rows / float((w * self.counts).sum()))  # mean 1 over the rows
        mass = w * self.counts
        self.cdf = np.cumsum(mass / mass.sum())
        self.cdf[-1] = 1.0
        self.epoch_size = self.rows
        self._blocks: dict[Any, np.ndarray] = {}

    @property
    def subclass_probabilities(self) -> np.ndarray:
        """P(subclass) of one draw (float64 (S,), in cache order): proportional to N_s w(N_s) in sampler mode,
        N_s / N in loss mode."""
        if self.apply == "loss":
            return self.counts / self.rows
        return np.diff(np.concatenate([[0.0], self.cdf]))

    def _block(self, key: Any, make) -> np.ndarray:
        if key not in self._blocks:
            if len(self._blocks) >= 4:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[key] = make()
        return self._blocks[key]

    def _sampler_block(self, k: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 31, k]))
        which = np.searchsorted(self.cdf, rng.random(PLAN_BLOCK), side="right")
        offset = np.minimum((rng.random(PLAN_BLOCK) * self.counts[which]).astype(np.int64), self.counts[which] - 1)
        return self.start[which] + offset

    def _loss_epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(np.random.SeedSequence([self.seed, 37, epoch])).permutation(self.rows)

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cache rows int64 (n,), loss weights float32 (n,)) of global ``positions`` (int64 (n,))."""
        positions = np.asarray(positions, np.int64)
        rows = np.empty(len(positions), np.int64)
        unit = PLAN_BLOCK if self.apply == "sampler" else self.rows
        for k in np.unique(positions // unit).tolist():
            mask = positions // unit == k
            if self.apply == "sampler":
                rows[mask] = self._block(("s", k), lambda: self._sampler_block(k))[positions[mask] - k * unit]
            else:
                rows[mask] = self._block(("l", k), lambda: self._loss_epoch(k))[positions[mask] - k * unit]
        if self.apply == "sampler":
            return rows, np.ones(len(rows), np.float32)
        which = np.searchsorted(self.start, rows, side="right") - 1
        return rows, self.sample_weight[which].astype(np.float32)


# --------------------------------------------------------------------------- the stream


class LatentStream:
    """One rank's weighted stream over a shard set within ``budget_bytes`` of decoded latents.

    ``global_batch``: rows per step over all ranks; rank ``rank`` of ``world`` takes positions p with
    p % world == rank of each global batch (as :func:`fairskin.diffusion.feed.step_inputs`).
    :meth:`steps` yields the fine-tune's :class:`~fairskin.diffusion.feed.StepInputs`; :meth:`batches`
    the same as numpy dicts.
    """

    def __init__(
        self,
        shards: LatentShards | Any,
        *,
        scheme: str = "none",
        apply: str = "sampler",
        seed: int = 0,
        global_batch: int,
        budget_bytes: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.shards = shards if isinstance(shards, LatentShards) else LatentShards(shards)
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} ranks")
        self.plan = ShardPlan(self.shards.subclass_counts, scheme, apply, seed)
        self.seed, self.global_batch, self.rank, self.world = int(seed), global_batch, rank, world
        self.budget_bytes = int(budget_bytes)
        per_step = global_batch // world
        probe = BudgetedReader(self.shards, 0)
        flip_bytes = self.shards.row_bytes // 2
        footers = min(OPEN_FILES, len(self.shards.files)) * FOOTER_GROUP_BYTES * self.shards.max_groups
        reserve = 2 * probe.group_bytes + STEPS_IN_FLIGHT * per_step * flip_bytes + footers
        cache = int(CACHE_FRACTION * self.budget_bytes) - reserve
        # Worst case every row of a window sits in its own group: the window's groups must all fit.
        self.window_steps = cache // (per_step * probe.group_bytes) if cache > 0 else 0
        if self.window_steps < 1:
            raise ValueError(
                f"memory budget {self.budget_bytes / MB:.1f} MB is too small for one step: {per_step} rows per step "
                f"each read in a row group of {self.shards.rows_per_group} rows ({probe.group_bytes / MB:.2f} MB), "
                f"plus {reserve / MB:.2f} MB of read buffers, steps in flight and open files' footers, within {CACHE_FRACTION:.0%} of the "
                f"budget; need at least {(reserve + per_step * probe.group_bytes) / CACHE_FRACTION / MB:.1f} MB "
                f"(or write smaller row groups)"
            )
        self.reader = BudgetedReader(self.shards, self.window_steps * per_step * probe.group_bytes)

    @property
    def epoch_steps(self) -> int:
        """Steps of one epoch (epoch size = rows, rounded down to whole global batches)."""
        return self.plan.epoch_size // self.global_batch

    def positions(self, step: int) -> np.ndarray:
        """This rank's global positions of ``step`` (int64 (global_batch / world,))."""
        return np.arange(
            step * self.global_batch + self.rank, (step + 1) * self.global_batch, self.world, dtype=np.int64
        )

    def batches(self, start_step: int = 0, stop_step: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Steps ``start_step`` .. ``stop_step - 1`` (default: one epoch) as dicts: ``step`` int, ``position``
        / ``row`` (training-set row id) / ``subclass`` / ``flip`` int64 (b,), ``weight`` float32 (b,),
        ``latents`` float32 (b, C, h, w); b = global_batch / world. A pure function of (seed, step)."""
        from fairskin.diffusion.feed import flips_of  # numpy-only helper; the feed's own flip rule

        stop_step = start_step + self.epoch_steps if stop_step is None else stop_step
        for lo in range(start_step, stop_step, self.window_steps):
            window = range(lo, min(lo + self.window_steps, stop_step))
            positions = [self.positions(s) for s in window]
            planned = [self.plan.lookup(p) for p in positions]
            self.reader.load(np.concatenate([rows for rows, _ in planned]))
            for step, pos, (rows, weights) in zip(window, positions, planned):
                flips = flips_of(pos, self.seed)
                latents, row_id, subclass = self.reader.gather(rows, flips)
                yield {
                    "step": step,
                    "position": pos,
                    "row": row_id,
                    "subclass": subclass,
                    "flip": flips,
                    "weight": weights,
                    "latents": latents,
                }

    def steps(self, start_step: int = 0, stop_step: int | None = None):
        """:meth:`batches` as :class:`fairskin.diffusion.feed.StepInputs` (``latents`` a torch tensor), what
        :class:`~fairskin.diffusion.feed.Prefetch` and the fine-tune's step consume."""
        import torch

        from fairskin.diffusion.feed import StepInputs

        for b in self.batches(start_step, stop_step):
            yield StepInputs(
                step=b["step"],
                rows=b["row"],
                weights=torch.from_numpy(b["weight"]),
                subclass=torch.from_numpy(b["subclass"]),
                flips=b["flip"],
                latents=torch.from_numpy(b["latents"]),
            )


def budget_bytes(megabytes: float) -> int:
    """A budget in MB (2**20 bytes) as bytes."""
    return int(megabytes * MB)


# --------------------------------------------------------------------------- checks of a stream


def subclass_frequency_pvalue(counts: np.ndarray, probabilities: np.ndarray) -> float:
    """Chi-square goodness of fit of drawn subclass ``counts`` (int (S,)) against ``probabilities`` (float (S,),
    summing to 1): the p-value (small: the frequencies do not follow the weights)."""
    from scipy.stats import chisquare

    counts, probabilities = np.asarray(counts, float), np.asarray(probabilities, float)
    keep = probabilities > 0
    if counts[~keep].sum():
        return 0.0
    return float(chisquare(counts[keep], counts.sum() * probabilities[keep]).pvalue)


def batch_mixing_pvalue(
    batch_counts: np.ndarray, probabilities: np.ndarray, *, simulations: int = 2000, seed: int = 0
) -> float:
    """Are the batches independent weighted draws? ``batch_counts``: int (batches, S), each row one batch's
    subclass counts (all batches the same size b).

    Statistic: the mean over batches of each batch's Pearson X^2 = sum_s (c_s - b p_s)^2 / (b p_s). Its null
    distribution (every batch Multinomial(b, p), independently) is simulated ``simulations`` times; the
    p-value is two-sided (smallest: 2 / (simulations + 1)). A stream that emits one subclass at a time, or
    groups rows by subclass, is over-dispersed; one that balances every batch exactly is under-dispersed;
    both get the smallest p.
    """
    batch_counts, p = np.asarray(batch_counts, np.int64), np.asarray(probabilities, float)
    b = int(batch_counts[0].sum())
    if np.any(batch_counts.sum(1) != b):
        raise ValueError("every batch must have the same size")
    keep = p > 0
    if batch_counts[:, ~keep].sum():
        return 0.0
    expected = b * p[keep]

    def mean_x2(counts: np.ndarray) -> np.ndarray:  # (..., batches, S) -> (...)
        return (((counts[..., keep] - expected) ** 2) / expected).sum(-1).mean(-1)

    rng = np.random.default_rng(seed)
    null = np.concatenate(
        [mean_x2(rng.multinomial(b, p / p.sum(), size=(100, len(batch_counts)))) for _ in range(-(-simulations // 100))]
    )[:simulations]
    observed = mean_x2(batch_counts)
    upper = (1 + np.sum(null >= observed)) / (1 + simulations)
    lower = (1 + np.sum(null <= observed)) / (1 + simulations)
    return float(min(1.0, 2 * min(upper, lower)))


def limit_allocator_slack() -> dict[str, str]:
    """Make freed read buffers go back to the OS, so the process's resident memory follows what the stream
    holds: pyarrow allocates from the system allocator (its default, mimalloc, kept 30-40 MB of freed row
    groups resident at a 64 MB budget here) and glibc serves blocks of 64 KB and more with their own
    mappings (its adaptive threshold otherwise grows and keeps freed blocks in the heap). Process-wide:
    call it in a process that streams (the benchmark's, a fine-tune worker). Returns what it set."""
    import ctypes
    import ctypes.util

    pa.set_memory_pool(pa.system_memory_pool())
    done = {"arrow_pool": pa.default_memory_pool().backend_name}
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "mallopt") and libc.mallopt(-3, 64 * 1024) == 1:  # -3: M_MMAP_THRESHOLD
            done["malloc_mmap_threshold"] = str(64 * 1024)
    return done
