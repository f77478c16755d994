"""Memorisation: do generated images sit closer to a training image than held-out real images do?

Per subclass, in one feature space (features (N, D), Euclidean distances in feature units): the
share of generated images whose nearest training image is nearer than the 5th percentile of the
held-out real images' nearest-training distances (:func:`memorisation`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch


def nearest_distances(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance (Q,) from each query (Q, D) to its nearest reference (R, D), in chunks of rows.

    Units are those of the features. NaN for every query when there are no references.
    """
    if len(queries) == 0:
        return np.zeros(0, np.float64)
    if len(references) == 0:
        return np.full(len(queries), np.nan)
    ref = torch.as_tensor(np.asarray(references, np.float64))
    out = [
        torch.cdist(torch.as_tensor(np.asarray(queries[i : i + chunk], np.float64)), ref).min(dim=1).values
        for i in range(0, len(queries), chunk)
    ]
    return torch.cat(out).numpy()


def _fraction_within(distances: np.ndarray, threshold: float) -> float:
    """Share of distances <= threshold; NaN when any distance or the threshold is undefined."""
    if len(distances) == 0 or not math.isfinite(threshold) or not np.isfinite(distances).all():
        return math.nan
    return float(np.mean(distances <= threshold))


def memorisation(
    gen_features: np.ndarray,
    gen_subclass: np.ndarray,
    train_features: np.ndarray,
    train_subclass: np.ndarray,
    heldout_features: np.ndarray,
    heldout_subclass: np.ndarray,
    *,
    quantile: float = 0.05,
) -> pd.DataFrame:
    """Per subclass, the share of generated images closer to a training image than real images are.

    Features: (G, D), (T, D), (H, D); subclass labels: (G,), (T,), (H,) of any hashable kind.
    For every generated image, the Euclidean distance to its nearest *training* image of the same
    subclass; the same for every held-out real image (val/test). The threshold is the
    ``quantile`` (5th percentile) of the held-out-to-train distances of that subclass, or of all
    subclasses pooled when a subclass has < 2 held-out images (``threshold_source`` = "global").
    ``memorised_fraction`` = share of generated images with distance <= threshold (<= so that
    exact copies count even when real near-duplicates put the threshold at 0).

    One row per subclass with generated images: ``subclass``, ``n_generated``, ``n_train``,
    ``n_heldout``, ``threshold``, ``threshold_source``, ``memorised_fraction``,
    ``median_gen_to_train``, ``median_heldout_to_train`` (distances in feature units; NaN where
    a subclass has no training images).
    """
    gen_subclass, train_subclass, heldout_subclass = map(np.asarray, (gen_subclass, train_subclass, heldout_subclass))
    gen_features, train_features, heldout_features = (
        np.asarray(f, np.float64) for f in (gen_features, train_features, heldout_features)
    )
    labels = list(pd.unique(gen_subclass))
    heldout_d = {
        s: nearest_distances(heldout_features[heldout_subclass == s], train_features[train_subclass == s])
        for s in pd.unique(heldout_subclass)
    }
    pooled = np.concatenate([d for d in heldout_d.values()]) if heldout_d else np.zeros(0)
    pooled = pooled[np.isfinite(pooled)]
    global_threshold = float(np.quantile(pooled, quantile)) if len(pooled) else math.nan
    rows = []
    for s in labels:
        gen_d = nearest_distances(gen_features[gen_subclass == s], train_features[train_subclass == s])
        held = heldout_d.get(s, np.zeros(0))
        own = len(held) >= 2 and np.isfinite(held).all()
        threshold = float(np.quantile(held, quantile)) if own else global_threshold
        rows.append(
            {
                "subclass": s,
                "n_generated": len(gen_d),
                "n_train": int((train_subclass == s).sum()),
                "n_heldout": len(held),
                "threshold": threshold,
                "threshold_source": "subclass" if own else "global",
                "memorised_fraction": _fraction_within(gen_d, threshold),
                "median_gen_to_train": float(np.median(gen_d)),
                "median_heldout_to_train": float(np.median(held)) if len(held) else math.nan,
            }
        )
    return pd.DataFrame(rows)
