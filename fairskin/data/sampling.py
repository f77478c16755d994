"""Level 1: subclass weights and per-epoch draws.

Weights are per (group, disease) subclass with N_rd training images:
``none`` w = 1, ``cbrs`` w = 1 / N_rd, ``sqrs`` w = 1 / sqrt(N_rd); per-sample weights are
normalised so their mean over the training set is 1. They are applied exactly one way:

* ``apply="sampler"``: each epoch is a draw of N ids with replacement, P(i) proportional
  to w_i, and every sample then carries loss weight 1;
* ``apply="loss"``: each epoch is a plain permutation and every sample carries w_i as its
  loss weight.

Applying both would square the weights, so an epoch plan carries one or the other.
An epoch's draw is a pure function of (seed, epoch), made on the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

WeightScheme = Literal["none", "cbrs", "sqrs"]
ApplyMode = Literal["sampler", "loss"]


def subclass_weight(count: np.ndarray | float, scheme: WeightScheme) -> np.ndarray:
    """Unnormalised weight of a subclass with ``count`` training samples."""
    count = np.asarray(count, dtype=np.float64)
    if np.any(count <= 0):
        raise ValueError("subclass counts must be positive")
    if scheme == "none":
        return np.ones_like(count)
    if scheme == "cbrs":
        return 1.0 / count
    if scheme == "sqrs":
        return 1.0 / np.sqrt(count)
    raise ValueError(f"weights {scheme!r}: expected none, cbrs or sqrs")


def sample_weights(subclass_ids: np.ndarray, scheme: WeightScheme) -> np.ndarray:
    """Per-sample weights (float64, shape (N,)) with mean 1, from each sample's subclass id."""
    subclass_ids = np.asarray(subclass_ids)
    _, inverse, counts = np.unique(subclass_ids, return_inverse=True, return_counts=True)
    w = subclass_weight(counts, scheme)[inverse]
    return w * (len(w) / w.sum())


@dataclass(frozen=True)
class EpochPlan:
    """One epoch: row positions into the training set, in order, and each row's loss weight."""

    epoch: int
    rows: np.ndarray  # int64 (N,), indices into the training set
    loss_weights: np.ndarray  # float32 (N,)

    def slice(self, start: int = 0, rank: int = 0, world: int = 1) -> EpochPlan:
        """The part of the epoch a worker reads: positions start.. then every world-th from rank."""
        rows = self.rows[start:][rank::world]
        weights = self.loss_weights[start:][rank::world]
        return EpochPlan(self.epoch, rows, weights)


class WeightedSampler:
    """Per-epoch draws over a training set's subclass labels.

    ``subclass_ids``: int array (N,), the subclass of each training row.
    ``epoch_size``: rows per epoch (default N).
    """

    def __init__(
        self,
        subclass_ids: Sequence[int] | np.ndarray,
        scheme: WeightScheme = "none",
        apply: ApplyMode = "sampler",
        seed: int = 0,
        epoch_size: int | None = None,
    ):
        if apply not in ("sampler", "loss"):
            raise ValueError(f"apply {apply!r}: expected sampler or loss")
        self.subclass_ids = np.asarray(subclass_ids, dtype=np.int64)
        if self.subclass_ids.size == 0:
            raise ValueError("cannot sample from an empty training set")
        self.scheme = scheme
        self.apply = apply
        self.seed = int(seed)
        self.weights = sample_weights(self.subclass_ids, scheme)
        self.epoch_size = int(epoch_size or len(self.subclass_ids))

    @property
    def probabilities(self) -> np.ndarray:
        """P(row i) under the sampler (float64, sums to 1); uniform in loss mode."""
        if self.apply == "loss":
            return np.full(len(self.weights), 1.0 / len(self.weights))
        return self.weights / self.weights.sum()

    def subclass_probabilities(self) -> pd.Series:
        """Expected share of each subclass among drawn rows."""
        return pd.Series(self.probabilities).groupby(self.subclass_ids).sum()

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))

    def epoch(self, epoch: int) -> EpochPlan:
        """The draw for ``epoch``: same (seed, epoch) -> same rows, on any machine."""
        rng = self._rng(epoch)
        n = len(self.subclass_ids)
        if self.apply == "sampler":
            # Inverse-CDF draw: exact, and identical across numpy versions for a fixed bit generator.
            cdf = np.cumsum(self.probabilities)
            cdf[-1] = 1.0
            rows = np.searchsorted(cdf, rng.random(self.epoch_size), side="right").astype(np.int64)
            weights = np.ones(self.epoch_size, np.float32)
        else:
            reps = -(-self.epoch_size // n)
            rows = np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.epoch_size].astype(np.int64)
            weights = self.weights[rows].astype(np.float32)
        return EpochPlan(int(epoch), rows, weights)
