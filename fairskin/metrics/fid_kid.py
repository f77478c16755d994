"""FID, KID and IS through torch-fidelity: one subclass's images, or any two feature sets.

:func:`subclass_metrics` compares one subclass's generated images with its real images (uint8
(N, H, W, 3) and (M, H, W, 3)) in a :class:`~fairskin.metrics.extractors.FeatureSpace`, with
torch-fidelity's optional cache for the real side (:func:`real_cache_name`);
:func:`inception_score` scores a set alone; :func:`features_metrics` gives the same FID and KID
from features already extracted, where one extraction serves many comparisons (the real-vs-real
floors of :mod:`fairskin.metrics.fid_floors`, the pooled figures of
:mod:`fairskin.metrics.fid_pooled`). FID is in squared feature units, KID (unbiased MMD^2) and
IS are dimensionless.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fairskin.metrics.extractors import FeatureSpace, UInt8Images, fidelity_kwargs

KID_MAX_SUBSET = 1000  # torch-fidelity's default subset size, the cap of our adaptive rule


def real_cache_name(extractor_name: str, sha256s: Sequence[str], subclass: str | Sequence[str]) -> str:
    """torch-fidelity cache name for one subclass's real images: ``real-<32 hex>``.

    Hashes the extractor name, the subclass label (a string or (group, disease)) and the *sorted*
    image (or shard) checksums, so the name identifies the set of images, whatever their order.
    torch-fidelity adds the extractor name and feature layer to the file names as well
    (``<cache_name>-<extractor>-features-<layer>.pt``, ``...-stat-fid-<layer>.pt``).
    """
    label = subclass if isinstance(subclass, str) else "\x1f".join(map(str, subclass))
    h = hashlib.sha256()
    for part in (extractor_name, label, *sorted(map(str, sha256s))):
        h.update(part.encode())
        h.update(b"\x1e")
    return f"real-{h.hexdigest()[:32]}"


def kid_subset_size_for(n_generated: int, n_real: int, requested: int | None = None) -> int:
    """KID subset size: ``min(requested or 1000, n_generated, n_real)``; must be >= 2.

    torch-fidelity raises unless the subset size is <= both set sizes, and its unbiased MMD
    divides by m (m - 1). When the size equals both set sizes every subset is the whole set,
    so KID's std is 0.
    """
    size = min(requested or KID_MAX_SUBSET, n_generated, n_real)
    if size < 2:
        raise ValueError(f"KID needs >= 2 images on each side, got {n_generated} generated and {n_real} real")
    return int(size)


def isc_splits_for(n: int) -> int:
    """IS splits: ``min(10, n // 2)``, at least 1, so every split holds >= 2 images."""
    return max(1, min(10, n // 2))


def subclass_metrics(
    generated: np.ndarray,
    real: np.ndarray,
    extractor: FeatureSpace,
    *,
    cache_name: str | None = None,
    cache_root: Path | None = None,
    kid_subset_size: int | None = None,
    isc: bool = False,
    batch_size: int = 128,
) -> dict:
    """FID and KID of one subclass's generated images against its real images.

    ``generated``: uint8 (N, H, W, 3); ``real``: uint8 (M, H, W, 3); both need >= 2 images
    (FID's covariance, KID's unbiased estimate). Returns ``fid`` (Frechet distance between the
    two feature Gaussians, in squared feature units; ~0 for identical sets), ``kid_mean``,
    ``kid_std`` (unbiased MMD^2 with torch-fidelity's cubic polynomial kernel, dimensionless, over
    100 subsets of size :func:`kid_subset_size_for`; slightly negative values are valid and mean
    "indistinguishable", e.g. a set against itself), ``kid_subset_size``, ``n_generated``,
    ``n_real``, and with ``isc=True`` also ``is_mean`` and ``is_std`` of the generated images.

    With ``cache_name`` (see :func:`real_cache_name`), the real side's features and FID
    statistics are cached by torch-fidelity under ``cache_root`` (default
    ``$TORCH_HOME/fidelity_cache``) and read back on the next call with the same name, *without
    looking at* ``real``: the name must identify the images.
    """
    import torch_fidelity

    n_gen, n_real = len(generated), len(real)
    if n_gen < 2 or n_real < 2:
        raise ValueError(f"FID/KID need >= 2 images on each side, got {n_gen} generated and {n_real} real")
    kwargs = fidelity_kwargs(extractor, batch_size)
    subset = kid_subset_size_for(n_gen, n_real, kid_subset_size)
    result = torch_fidelity.calculate_metrics(
        input1=UInt8Images(generated),
        input2=UInt8Images(real),
        fid=True,
        kid=True,
        isc=isc,
        kid_subset_size=subset,
        isc_splits=isc_splits_for(n_gen),
        cache=cache_name is not None,
        input2_cache_name=cache_name,
        cache_root=None if cache_root is None else str(cache_root),
        **kwargs,
    )
    out = {
        "fid": result[torch_fidelity.KEY_METRIC_FID],
        "kid_mean": result[torch_fidelity.KEY_METRIC_KID_MEAN],
        "kid_std": result[torch_fidelity.KEY_METRIC_KID_STD],
        "kid_subset_size": subset,
        "n_generated": n_gen,
        "n_real": n_real,
    }
    if isc:
        out["is_mean"] = result[torch_fidelity.KEY_METRIC_ISC_MEAN]
        out["is_std"] = result[torch_fidelity.KEY_METRIC_ISC_STD]
    return out


def inception_score(pixels: np.ndarray, extractor: FeatureSpace, batch_size: int = 128) -> dict[str, float]:
    """IS of uint8 (N, H, W, 3) images with the extractor's IS layer (the classifier's logits).

    ``isc_splits = min(10, N // 2)``; returns ``is_mean`` and ``is_std`` over the splits
    (dimensionless, >= 1; with the reference classifier its maximum is the number of diseases).
    NaN for an empty set.
    """
    import torch_fidelity

    if len(pixels) == 0:
        return {"is_mean": math.nan, "is_std": math.nan}
    result = torch_fidelity.calculate_metrics(
        input1=UInt8Images(pixels),
        isc=True,
        isc_splits=isc_splits_for(len(pixels)),
        cache=False,
        **fidelity_kwargs(extractor, batch_size),
    )
    return {"is_mean": result[torch_fidelity.KEY_METRIC_ISC_MEAN], "is_std": result[torch_fidelity.KEY_METRIC_ISC_STD]}


def features_metrics(
    query: np.ndarray, reference: np.ndarray, kid_subset_size: int | None = None, rng_seed: int = 2020
) -> dict[str, float]:
    """FID and KID of two feature sets (N, D) and (M, D), with torch-fidelity's own maths.

    The same figures as :func:`subclass_metrics` gives for the images these features came from
    (torch-fidelity's ``fid_features_to_statistics`` / ``fid_statistics_to_metric`` and
    ``kid_features_to_metric``, KID subset size :func:`kid_subset_size_for`, its default 100
    subsets and seed 2020); used where one extraction serves many comparisons (floors, pools).
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    q = torch.as_tensor(np.asarray(query, np.float32))
    r = torch.as_tensor(np.asarray(reference, np.float32))
    subset = kid_subset_size_for(len(q), len(r), kid_subset_size)
    fid = fid_statistics_to_metric(fid_features_to_statistics(q), fid_features_to_statistics(r), verbose=False)
    kid = kid_features_to_metric(q, r, kid_subset_size=subset, verbose=False, rng_seed=rng_seed)
    return {
        "fid": float(fid[KEY_METRIC_FID]),
        "kid_mean": float(kid[KEY_METRIC_KID_MEAN]),
        "kid_std": float(kid[KEY_METRIC_KID_STD]),
        "kid_subset_size": subset,
        "n_generated": len(q),
        "n_real": len(r),
    }
