"""Pooled FID and KID: a whole pool against all the real images, the pool subsampled to the real mix.

The paper's Table 2 figures (:func:`pooled_summary`): per group and overall, with the pool first
subsampled (seeded, :func:`mix_subsample`) to the real set's disease or (group, disease) mix, so a
generator that balances the subclasses is not penalised for its balance. Inputs are features
(N, D) of one feature space (:mod:`fairskin.metrics.extractors`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fairskin.metrics.fid_kid import features_metrics
from fairskin.metrics.subclasses import subclass_codes


def mix_subsample(pool_keys: Sequence, real_keys: Sequence, seed: int = 0) -> np.ndarray:
    """Row indices (sorted) of the largest subsample of a pool whose key mix equals the real set's.

    Keys are any hashable labels (a disease, or a "group/disease" code). Over the keys present in
    both sets, the real mix is ``p_k = real_k / R``; the subsample has ``M = min_k floor(pool_k / p_k)``
    rows, ``M p_k`` of key ``k`` (largest-remainder rounding), drawn without replacement by a
    generator seeded with ``seed``. A pool that already has the real mix is returned whole.
    Keys of the pool absent from the real set get no rows.
    """
    pool_keys, real_keys = np.asarray(pool_keys, dtype=object), np.asarray(real_keys, dtype=object)
    real_counts = pd.Series(real_keys).value_counts()
    pool_counts = pd.Series(pool_keys).value_counts()
    keys = [k for k in real_counts.index if k in pool_counts.index]
    if not keys:
        return np.zeros(0, np.int64)
    r = {k: int(real_counts[k]) for k in keys}
    p = {k: int(pool_counts[k]) for k in keys}
    total = sum(r.values())
    size = min(p[k] * total // r[k] for k in keys)  # floor(pool_k / p_k), in integers
    exact = {k: size * r[k] / total for k in keys}
    target = {k: min(p[k], int(math.floor(exact[k]))) for k in keys}
    for k in sorted(keys, key=lambda k: (-(exact[k] - math.floor(exact[k])), str(k)))[: size - sum(target.values())]:
        target[k] = min(p[k], target[k] + 1)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9001ED]))
    rows = [rng.choice(np.flatnonzero(pool_keys == k), target[k], replace=False) for k in sorted(keys, key=str)]
    return np.sort(np.concatenate(rows).astype(np.int64))


def pooled_metrics(
    pool_features: np.ndarray,
    pool_keys: Sequence,
    real_features: np.ndarray,
    real_keys: Sequence,
    *,
    match_mix: bool = True,
    seed: int = 0,
    kid_subset_size: int | None = None,
) -> dict[str, Any]:
    """FID/KID of a whole pool (no subcategory distinction) against all the real images.

    With ``match_mix`` (the default) the pool is first subsampled to the real set's key mix
    (:func:`mix_subsample`), so a generator that balances the subclasses is compared with the
    real distribution it would have to match, not penalised for its balance. NaN with < 2 rows
    on either side. Returns ``fid``, ``kid_mean``, ``kid_std``, ``n_generated`` (rows used),
    ``n_real``.
    """
    rows = mix_subsample(pool_keys, real_keys, seed) if match_mix else np.arange(len(pool_features))
    if len(rows) < 2 or len(real_features) < 2:
        return {
            "fid": math.nan,
            "kid_mean": math.nan,
            "kid_std": math.nan,
            "n_generated": len(rows),
            "n_real": len(real_features),
        }
    out = features_metrics(np.asarray(pool_features)[rows], real_features, kid_subset_size)
    out.pop("kid_subset_size")
    return out


def pooled_summary(
    pool_features: np.ndarray,
    pool_meta: pd.DataFrame,
    real_features: np.ndarray,
    real_meta: pd.DataFrame,
    groups: Sequence[str],
    *,
    seed: int = 0,
    kid_subset_size: int | None = None,
) -> dict[str, float]:
    """The paper's Table 2 pooled figures, each pool subsampled to the real mix (seeded).

    ``fid_pooled_<group>`` / ``kid_pooled_<group>``: the group's generated images (disease mix
    matched to the group's real images) against all the group's real images;
    ``fid_pooled_overall`` / ``kid_pooled_overall``: every generated image ((group, disease) mix
    matched) against every real image; ``n_pooled_<group>``, ``n_pooled_overall``: images used.
    """
    out: dict[str, float] = {}
    pool_group, real_group = pool_meta["group"].to_numpy(), real_meta["group"].to_numpy()
    for g in groups:
        p, r = pool_group == g, real_group == g
        m = pooled_metrics(
            pool_features[p],
            pool_meta["disease"].to_numpy()[p],
            real_features[r],
            real_meta["disease"].to_numpy()[r],
            seed=seed,
            kid_subset_size=kid_subset_size,
        )
        out[f"fid_pooled_{g}"], out[f"kid_pooled_{g}"], out[f"n_pooled_{g}"] = m["fid"], m["kid_mean"], m["n_generated"]
    m = pooled_metrics(
        pool_features,
        subclass_codes(pool_meta),
        real_features,
        subclass_codes(real_meta),
        seed=seed,
        kid_subset_size=kid_subset_size,
    )
    out["fid_pooled_overall"], out["kid_pooled_overall"], out["n_pooled_overall"] = (
        m["fid"],
        m["kid_mean"],
        m["n_generated"],
    )
    return out
