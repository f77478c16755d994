"""The pool's ITAs against the real ones: W1 distance in units of the real-vs-real floor, and spread.

Distance to the real distribution (the primary skin-tone endpoint)
    ``ita_distance_ratios``, per group ``g``: the reference is the real training images' ITAs of
    ``g`` (``ReferenceBands.samples``), the floor ``W1(held-out real ITAs of g, reference)`` in
    degrees (``W1``: 1-D Wasserstein-1 distance, the area between the two empirical CDFs). The
    pool side is subsampled per (g, disease) subclass to the held-out split's count of that
    subclass (without replacement where the pool has enough, else with), so it has the held-out
    N and disease mix; its W1 to the reference is averaged over ``subsamples`` seeded draws.
    ``w1_ratio = mean W1(pool subsample, reference) / floor``: 1 = as close to the reference as
    held-out real images, larger = worse. W1 shrinks with N, so comparing at the held-out N
    keeps the ratio free of the pool's size. A flat-patch pool lands at its group's mean
    absolute deviation about the median (several floors), so it fails this endpoint.
    ``spread_ratio = IQR(pool ITAs of g) / IQR(reference ITAs of g)``: < 1 a narrower tone
    range than real (0 for flat patches), > 1 wider.

    The floor is one held-out draw, so a real sample's ratio scatters about 1 whatever N (the
    procedural groups mix two FSTs whose palettes differ, and W1 between samples is dominated by
    the drawn mix): over 200 simulated rounds with the Fitzpatrick17k subclass mix, per group
    median 1.05, 90th percentile ~1.9, 15-25 % above 1.5, while a flat-patch pool's ratio grows
    as sqrt(N) (3.4-17 at 59-303 held-out images per group). Within one run every variant shares
    the floor, so the floor's luck scales all variants of a group alike (it does move which group
    is the worst).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fairskin.metrics.ita import check_labelled

SUBSAMPLES = 8  # pool subsamples averaged into the numerator of w1_ratio
DISTANCE_COLUMNS = (
    "group",
    "n",
    "n_heldout",
    "n_subsample",
    "w1_floor",
    "w1_pool",
    "w1_ratio",
    "pool_iqr",
    "real_iqr",
    "spread_ratio",
)


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 distance between two 1-D samples ``(n,)`` and ``(m,)``, in their unit (degrees).

    The area between the two empirical CDFs, ``integral |F_u(x) - F_v(x)| dx``, evaluated exactly
    between consecutive pooled sample points. Equal-weight samples; both must be non-empty.
    """
    u = np.sort(np.asarray(u, dtype=np.float64).reshape(-1))
    v = np.sort(np.asarray(v, dtype=np.float64).reshape(-1))
    if len(u) == 0 or len(v) == 0:
        raise ValueError(f"W1 needs two non-empty samples, got {len(u)} and {len(v)} values")
    points = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, points[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, points[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(points)))


def _iqr(values: np.ndarray) -> float:
    q25, q75 = np.percentile(values, [25, 75])
    return float(q75 - q25)


def heldout_mix_subsample(pool_disease: Sequence, heldout_disease: Sequence, rng: np.random.Generator) -> np.ndarray:
    """Indices into one group's pool ``(n,)`` drawing, per disease, the held-out count of that disease.

    ``pool_disease`` ``(n,)`` and ``heldout_disease`` ``(m,)`` are the disease labels of one
    group's pool and held-out images. For each disease of the held-out set (sorted), ``k`` =
    its held-out count rows are drawn from the pool's rows of that disease: without
    replacement when the pool has at least ``k``, else with replacement. Diseases the pool
    lacks are left out (the subsample is then smaller than ``m``); pool diseases absent from
    the held-out set get weight 0. Returns int64 ``(<= m,)``, grouped by disease.
    """
    pool_disease = np.asarray(pool_disease, dtype=object).reshape(-1)
    names, counts = np.unique(np.asarray(heldout_disease, dtype=object).reshape(-1), return_counts=True)
    parts = []
    for d, k in zip(names.tolist(), counts.tolist()):
        rows = np.flatnonzero(pool_disease == d)
        if len(rows):
            parts.append(rng.choice(rows, size=k, replace=len(rows) < k))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _group_distance(
    g, real: np.ndarray, held_ita: np.ndarray, held_disease: np.ndarray, pool_ita, pool_disease, subsamples, rng
) -> dict:
    """One group's row of :func:`ita_distance_ratios`: ``real`` the reference ITAs, ``held_*`` and
    ``pool_*`` the group's held-out and pool ITAs and diseases; draws ``subsamples`` subsamples from ``rng``."""
    if len(real) == 0:
        raise ValueError(f"group {g!r} has no reference (training) ITA values")
    if not len(held_ita):
        raise ValueError(f"group {g!r} has no held-out ITA values")
    floor = wasserstein_1d(held_ita, real)
    if floor <= 0:
        raise ValueError(f"group {g!r}: the real-vs-real W1 floor is 0 (held-out and reference ITAs coincide)")
    real_iqr = _iqr(real)
    if real_iqr <= 0:
        raise ValueError(f"group {g!r}: the reference ITAs have an inter-quartile range of 0")
    draws = [heldout_mix_subsample(pool_disease, held_disease, rng) for _ in range(subsamples)]
    if len(draws[0]) == 0:
        raise ValueError(
            f"group {g!r}: no pool image has one of the held-out diseases {sorted(set(held_disease.tolist()))}"
        )
    w1_pool = float(np.mean([wasserstein_1d(pool_ita[rows_], real) for rows_ in draws]))
    pool_iqr = _iqr(pool_ita)
    return {
        "group": g,
        "n": len(pool_ita),
        "n_heldout": len(held_ita),
        "n_subsample": len(draws[0]),
        "w1_floor": floor,
        "w1_pool": w1_pool,
        "w1_ratio": w1_pool / floor,
        "pool_iqr": pool_iqr,
        "real_iqr": real_iqr,
        "spread_ratio": pool_iqr / real_iqr,
    }


def ita_distance_ratios(
    gen_ita: np.ndarray,
    gen_group: Sequence,
    gen_disease: Sequence,
    heldout_ita: np.ndarray,
    heldout_group: Sequence,
    heldout_disease: Sequence,
    reference: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    subsamples: int = SUBSAMPLES,
) -> pd.DataFrame:
    """Per group: the pool's W1 distance to the real ITAs in units of the real-vs-real floor, and its spread.

    ``gen_ita`` ``(N,)`` degrees with ``gen_group``, ``gen_disease`` ``(N,)``: the pool;
    ``heldout_ita`` ``(M,)`` degrees with ``heldout_group``, ``heldout_disease`` ``(M,)``: real
    images outside the reference; ``reference``: group -> the real reference ITAs ``(R_g,)``
    in degrees (the training split, e.g. ``ReferenceBands.samples``). One row per group
    present in the pool, in ``reference``'s order (then any other, sorted), columns:

    - ``n``, ``n_heldout``, ``n_subsample`` (pool images per subsample: ``n_heldout`` unless
      the pool lacks one of the held-out diseases, see ``heldout_mix_subsample``);
    - ``w1_floor``: ``W1(held-out ITAs of g, reference of g)``, degrees;
    - ``w1_pool``: the mean over ``subsamples`` draws (``numpy.random.default_rng(seed)``, one
      stream over the groups in row order) of ``W1(pool subsample, reference of g)``, degrees;
    - ``w1_ratio``: ``w1_pool / w1_floor`` (1 = as close as held-out real, larger = worse);
    - ``pool_iqr``, ``real_iqr``: inter-quartile ranges (degrees) of the whole pool's and the
      reference's ITAs of g; ``spread_ratio = pool_iqr / real_iqr``.

    Raises ``ValueError`` naming the group when a pool group has no held-out or no reference
    images, none of its pool images has a held-out disease, or its floor or reference IQR is 0.
    """
    ita, groups = check_labelled(gen_ita, gen_group, "gen_ita", "gen_group")
    diseases = np.asarray(gen_disease, dtype=object).reshape(-1)
    h_ita, h_groups = check_labelled(heldout_ita, heldout_group, "heldout_ita", "heldout_group")
    h_diseases = np.asarray(heldout_disease, dtype=object).reshape(-1)
    if len(diseases) != len(ita):
        raise ValueError(f"gen_ita and gen_disease differ in length: {len(ita)} and {len(diseases)}")
    if len(h_diseases) != len(h_ita):
        raise ValueError(f"heldout_ita and heldout_disease differ in length: {len(h_ita)} and {len(h_diseases)}")
    if subsamples < 1:
        raise ValueError(f"subsamples must be >= 1, got {subsamples}")
    present = set(groups.tolist())
    order = [g for g in reference if g in present] + sorted(present - set(reference))
    rng = np.random.default_rng(seed)
    rows = []
    for g in order:
        real = np.asarray(reference.get(g, ()), dtype=np.float64).reshape(-1)
        held, mine = h_groups == g, groups == g
        rows.append(_group_distance(g, real, h_ita[held], h_diseases[held], ita[mine], diseases[mine], subsamples, rng))
    return pd.DataFrame(rows, columns=list(DISTANCE_COLUMNS))
