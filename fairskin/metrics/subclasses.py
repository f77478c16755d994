"""Per-subclass tables of the generation metrics: (group, disease) codes, group means, variances.

A subclass is one (group, disease); the generation metrics are computed per subclass and
summarised per group (weighted by the group's real disease mixture) and overall (unweighted over
subclasses). :func:`summarise_subclasses` gives the FID/KID summary of a per-subclass table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

FID_VAR_DDOF = 1  # variances of FID over subclasses / groups are sample variances


def subclass_codes(meta: pd.DataFrame) -> np.ndarray:
    """One code per row of ``meta`` (columns group, disease): group and disease joined by ``"\\x1f"``, object (N,)."""
    return (meta["group"].astype(str) + "\x1f" + meta["disease"].astype(str)).to_numpy()


def weighted_mean(values: pd.Series, weights: pd.Series) -> float:
    """Mean of ``values`` weighted by ``weights`` over the rows with a value and a weight > 0; NaN if none."""
    ok = values.notna() & (weights > 0)
    return float(np.average(values[ok], weights=weights[ok])) if ok.any() else math.nan


def sample_variance(values: Sequence[float]) -> float:
    """Sample variance (ddof ``FID_VAR_DDOF`` = 1) of the finite ``values``; NaN with too few of them."""
    values = np.asarray([v for v in values if np.isfinite(v)], float)
    return float(np.var(values, ddof=FID_VAR_DDOF)) if len(values) > FID_VAR_DDOF else math.nan


def summarise_subclasses(per_subclass: pd.DataFrame, groups: Sequence[str]) -> dict[str, float]:
    """Group and overall FID/KID from per-subclass rows (columns group, fid, kid_mean, n_real).

    ``fid_<group>``, ``kid_<group>``: mean over the group's subclasses weighted by ``n_real``
    (the group's real disease mixture). ``fid_mean``, ``kid_mean``: unweighted mean over
    subclasses, so a balanced generator is not penalised for its balance. ``fid_var_subclass``
    and ``fid_var_group``: sample variances (ddof=1, ``fid_var_ddof``) of the per-subclass and
    per-group FIDs. Rows with NaN FID (not evaluated) are left out of every figure.

    The paper reports FID variance (e.g. 276.63) without saying whether it is over subclasses
    (section 4.1) or over groups (section 4.5), nor the ddof; both are given here, and neither is
    comparable with an Inception-space figure unless the report's ``feature_extractor`` says Inception.
    """
    out: dict[str, float] = {}
    for g in groups:
        rows = per_subclass[per_subclass["group"] == g]
        out[f"fid_{g}"] = weighted_mean(rows["fid"], rows["n_real"])
        out[f"kid_{g}"] = weighted_mean(rows["kid_mean"], rows["n_real"])
    out["fid_mean"] = float(per_subclass["fid"].mean())
    out["kid_mean"] = float(per_subclass["kid_mean"].mean())
    out["fid_var_subclass"] = sample_variance(per_subclass["fid"])
    out["fid_var_group"] = sample_variance([out[f"fid_{g}"] for g in groups])
    out["fid_var_ddof"] = FID_VAR_DDOF
    out["n_subclasses_evaluated"] = int(per_subclass["fid"].notna().sum())
    return out
