"""The real-vs-real floor of FID and KID: what a perfect generator of the same N would score.

FID is biased upwards at small N, so a subclass's FID is read against the FID of held-out real
images of that subclass at the generated N (:func:`real_floor`, per subclass
:func:`floor_table`, summarised by :func:`summarise_floors`). Inputs are features (N, D) of one
feature space (:mod:`fairskin.metrics.extractors`); FID in squared feature units, KID
dimensionless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fairskin.metrics.fid_kid import features_metrics
from fairskin.metrics.subclasses import sample_variance, subclass_codes, weighted_mean


def real_floor(
    reference: np.ndarray, heldout: np.ndarray, n: int, *, seed: int = 0, kid_subset_size: int | None = None
) -> dict[str, Any]:
    """The real-vs-real floor of one subclass: what a perfect generator of ``n`` images would score.

    ``reference`` (M, D): features of the real images the generated ones are compared with;
    ``heldout`` (H, D): features of real images of the same subclass that are not in the
    reference. With ``H >= n``, ``n`` held-out images (seeded draw) against the whole reference
    (``floor_method`` "heldout"): the same N on both sides as the generated comparison. With
    fewer held-out images, the reference is split into two random halves and up to ``n`` images
    of one half are compared with the other half ("split-half": smaller sets on both sides, so
    this floor is, if anything, too high). NaN where either side would hold < 2 images.

    FID is biased upwards at small N (Chong & Forsyth 2020), so the FID floor is well above 0
    for small subclasses; the unbiased KID floor is ~0 (and may be slightly negative): assert
    with KID. Returns ``fid_floor``, ``kid_floor``, ``kid_floor_std``, ``floor_method``,
    ``floor_n_query``, ``floor_n_reference``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0F1008]))
    reference, heldout = np.asarray(reference), np.asarray(heldout)
    n = int(n)
    if n >= 2 and len(heldout) >= n:
        query, ref, method = heldout[np.sort(rng.choice(len(heldout), n, replace=False))], reference, "heldout"
    else:
        order = rng.permutation(len(reference))
        half = len(reference) // 2
        query, ref, method = (
            reference[np.sort(order[: min(half, max(n, 0))])],
            reference[np.sort(order[half:])],
            "split-half",
        )
    out: dict[str, Any] = {
        "fid_floor": math.nan,
        "kid_floor": math.nan,
        "kid_floor_std": math.nan,
        "floor_method": method,
        "floor_n_query": len(query),
        "floor_n_reference": len(ref),
    }
    if len(query) >= 2 and len(ref) >= 2:
        m = features_metrics(query, ref, kid_subset_size)
        out.update(fid_floor=m["fid"], kid_floor=m["kid_mean"], kid_floor_std=m["kid_std"])
    return out


def floor_table(
    real_features: np.ndarray,
    real_meta: pd.DataFrame,
    heldout_features: np.ndarray,
    heldout_meta: pd.DataFrame,
    n_generated: pd.DataFrame,
    *,
    seed: int = 0,
    kid_subset_size: int | None = None,
) -> pd.DataFrame:
    """:func:`real_floor` for every row of ``n_generated`` (columns group, disease, n_generated).

    Each subclass gets its own seed (``seed``, row number), so floors do not share draws.
    """
    real_codes, held_codes = subclass_codes(real_meta), subclass_codes(heldout_meta)
    rows = []
    for i, r in enumerate(n_generated.itertuples(index=False)):
        code = f"{r.group}\x1f{r.disease}"
        floor = real_floor(
            real_features[real_codes == code],
            heldout_features[held_codes == code],
            int(r.n_generated),
            seed=int(seed) * 1000 + i,
            kid_subset_size=kid_subset_size,
        )
        rows.append({"group": r.group, "disease": r.disease, **floor})
    return pd.DataFrame(rows)


def summarise_floors(per_subclass: pd.DataFrame, groups: Sequence[str]) -> dict[str, float]:
    """Floor figures from per-subclass rows (columns group, fid, fid_floor, kid_floor, n_real).

    ``fid_floor_<group>`` / ``kid_floor_<group>``: weighted by ``n_real`` like ``fid_<group>``;
    ``fid_floor_mean`` / ``kid_floor_mean``: unweighted over subclasses like ``fid_mean``;
    ``fid_mean_floor_corrected``: mean of ``fid - fid_floor``; ``fid_var_subclass_floor_corrected``:
    sample variance (ddof=1) over subclasses of ``fid - fid_floor``, the part of the spread that
    the subclasses' sizes (FID's small-N bias) do not explain.
    """
    out: dict[str, float] = {}
    evaluated = per_subclass[per_subclass["fid"].notna()]
    for g in groups:
        rows = evaluated[evaluated["group"] == g]
        out[f"fid_floor_{g}"] = weighted_mean(rows["fid_floor"], rows["n_real"])
        out[f"kid_floor_{g}"] = weighted_mean(rows["kid_floor"], rows["n_real"])
    corrected = evaluated["fid"] - evaluated["fid_floor"]
    out["fid_floor_mean"] = float(evaluated["fid_floor"].mean())
    out["kid_floor_mean"] = float(evaluated["kid_floor"].mean())
    out["fid_mean_floor_corrected"] = float(corrected.mean())
    out["fid_var_subclass_floor_corrected"] = sample_variance(corrected)
    return out
